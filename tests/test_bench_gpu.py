"""The GPU benchmark's instruments, on the CPU: UNet evaluations counted by a forward hook,
phases timed per call, kernels summarised by class, PSNR and the time budget."""

import math

import pytest
import torch

from bench.probes import CallProbe, kernel_class, kernel_classes, summarize_calls
from winnow.models import generator as generator_module
from winnow.models.generator import Generator, GeneratorParams, Request, load_pipeline


@pytest.mark.parametrize("scheduler", ["PNDMScheduler", None])
def test_probe_counts_every_unet_evaluation_and_times_each_call(tiny_sd, scheduler):
    """PNDM as SD 1.5 configures it evaluates the UNet once more than its steps (its first
    step takes two; the tiny pipeline's own DDIM, once per step); the hook counts what ran,
    both guidance halves as rows, and the text encoder's distinct rows."""
    from diffusers import PNDMScheduler

    params = GeneratorParams(model=str(tiny_sd), steps=3, batch_size=2, scheduler=scheduler)
    pipe = load_pipeline(params)
    if scheduler:
        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    probe = CallProbe(torch.device("cpu"), keep_images=True)
    with probe.installed(pipe):
        batches = list(Generator(params).generate([Request("a red circle", "", s) for s in range(3)]))
    assert generator_module.Generator._call.__name__ == "_call" and "decode" not in vars(pipe.vae)
    evals = len(pipe.scheduler.timesteps)
    assert evals == (4 if scheduler == "PNDMScheduler" else 3)
    calls = probe.per_call()
    assert [c["unet_evals"] for c in calls] == [evals, evals]
    assert all(c["unet_rows"] == evals * 2 * 2 for c in calls)  # CFG: 2 rows per candidate
    assert all(c["text_rows"] == 2 and c["vae_rows"] == 2 for c in calls)  # prompt + negative
    for c in calls:
        assert c["pipeline"] >= c["unet"] > 0 and c["latents"] > 0 and c["scheduler"] > 0
    assert calls[0]["gpu_idle"] >= 0 and calls[1]["gpu_idle"] is None
    assert torch.equal(probe.calls[0].images, batches[0].images)
    summary = summarize_calls(calls)
    assert summary["unet_evals_per_call"] == [evals] and summary["unet_rows"] == 2 * evals * 4
    assert summary["median_ms"]["gpu_idle"] == pytest.approx(calls[0]["gpu_idle"], abs=1e-3)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128", "conv"),
        ("triton_tem_fused_convolution_3", "conv"),
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTT", "gemm"),
        ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>", "gemm"),
        ("triton_tem_fused_mm_2", "gemm"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
        ("triton_poi_fused__scaled_dot_product_efficient_attention_add_convolution_0", "elementwise"),
        ("triton_red_fused_native_group_norm_1", "norm"),
        ("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::BFloat16>", "norm"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add>", "elementwise"),
        ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>", "layout"),
        ("Memcpy HtoD (Pinned -> Device)", "memcpy"),
        ("aten::mkldnn_convolution", "conv"),
        ("aten::addmm", "gemm"),
        ("aten::upsample_nearest2d", "other"),
    ],
)
def test_kernel_names_fall_into_their_class(name, cls):
    assert kernel_class(name) == cls


def test_kernel_summary_adds_time_by_class_and_names_the_attention_backend():
    summary = kernel_classes(
        [("nvjet_a", 300.0), ("nvjet_b", 100.0), ("flash_fwd_kernel", 500.0), ("xmma_fprop_x", 100.0)],
        top=1,
    )
    assert summary["total_ms"] == 1.0
    assert list(summary["classes"]) == ["attention", "gemm", "conv"]
    assert summary["classes"]["gemm"] == {"ms": 0.4, "share": 0.4, "kernels": 2, "top": ["nvjet_a"]}
    assert summary["sdpa_backend"] == "flash"
    assert kernel_classes([("fmha_cutlassF_bf16", 1.0)])["sdpa_backend"] == "efficient"
    assert kernel_classes([("nvjet_a", 1.0)])["sdpa_backend"] is None


def test_psnr_and_budget():
    from bench.gpu import PSNR_CAP_DB, Budget, psnr

    a = torch.full((2, 3, 4, 4), 0.5)
    b = a.clone()
    b[1] += 0.1  # mse 0.01: 20 dB
    assert psnr(b, a) == {"min_db": 20.0, "median_db": pytest.approx((20.0 + PSNR_CAP_DB) / 2)}
    budget = Budget(limit_s=100, started=0.0)  # started in 1970: nothing is left
    assert not budget.fits("sweep", 1.0) and "time budget" in budget.skipped["sweep"]
    assert math.isfinite(budget.used())
