"""Tiny random-weight diffusers pipelines for tests: real classes, seconds to build and run."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_pipeline(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a random-weight ``StableDiffusionPipeline`` producing 16×16 images to ``out_dir``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from winnow.models.assemble import sd_pipeline
    from winnow.models.tokenizer import build_clip_tokenizer

    out = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(out / "_tokenizer_src")
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    pipe = sd_pipeline(unet, vae, text_encoder, tokenizer, scheduler)
    pipe.save_pretrained(out)
    return out


def build_tiny_preview(out_dir: str | Path, latent_channels: int = 4, seed: int = 0) -> Path:
    """Save a random ``AutoencoderTiny`` (TAESD's classes) decoding the tiny pipeline's 8×8
    latents to 16×16 images, for ``prune.preview``."""
    from diffusers import AutoencoderTiny

    out = Path(out_dir)
    torch.manual_seed(seed)
    AutoencoderTiny(
        latent_channels=latent_channels,
        encoder_block_out_channels=(8,),
        num_encoder_blocks=(1,),
        decoder_block_out_channels=(8, 8),
        num_decoder_blocks=(1, 1),
    ).save_pretrained(out)
    return out


def build_tiny_checker_pipeline(
    pipeline_dir: str | Path, out_dir: str | Path, flag_all: bool = False
) -> Path:
    """Save the pipeline in ``pipeline_dir`` (``build_tiny_pipeline``'s) to ``out_dir`` with a
    random-weight ``StableDiffusionSafetyChecker`` and its feature extractor (16×16 px), as SD
    pipelines from the hub have them; it blacks out the images it flags. ``flag_all``: it flags
    every image; else about half of them: its concept embedding is one probe image's embedding
    minus the mean of eight (so the images this pipeline makes fall on both sides of it)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir)
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config=small, vision_config={**small, "image_size": 16, "patch_size": 8}, projection_dim=8
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        checker = StableDiffusionSafetyChecker(config).eval()
    extractor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    with torch.no_grad():
        probes = pipe(
            prompt=["a probe"] * 8,
            generator=[torch.Generator().manual_seed(s) for s in range(8)],
            num_inference_steps=2,
            output_type="pil",
        ).images
        pixels = extractor(probes, return_tensors="pt").pixel_values
        embeds = checker.visual_projection(checker.vision_model(pixels)[1])
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        checker.concept_embeds.copy_((embeds[0] - embeds.mean(0)).expand_as(checker.concept_embeds))
        checker.concept_embeds_weights.fill_(-2.0 if flag_all else 0.0)  # cosine above it: flagged
        checker.special_care_embeds_weights.fill_(2.0)  # never: no cosine reaches it
    pipe.register_modules(safety_checker=checker, feature_extractor=extractor)
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out
