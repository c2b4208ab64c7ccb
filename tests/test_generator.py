import pytest
import torch
from pydantic import ValidationError

from winnow.models.generator import Generator, GeneratorParams, Request, candidate_seed, pick_device


def test_candidate_seeds_are_deterministic_and_distinct():
    seeds = {candidate_seed(0, p, k) for p in ("a", "b") for k in range(100)}
    assert len(seeds) == 200
    assert candidate_seed(0, "a", 1) == candidate_seed(0, "a", 1) != candidate_seed(1, "a", 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_cpu_defaults_to_float32():
    device, dtype = pick_device(GeneratorParams(model="x", device="cpu"))
    assert (device.type, dtype) == ("cpu", torch.float32)


def test_unknown_scheduler_is_a_config_error():
    with pytest.raises(ValidationError, match="unknown diffusers scheduler"):
        GeneratorParams(model="x", scheduler="FancyScheduler")


def requests(n: int) -> list[Request]:
    return [Request(f"prompt {i % 3}", "", candidate_seed(7, f"p{i % 3}", i)) for i in range(n)]


def test_fixed_size_batches_with_padding(tiny_sd):
    gen = Generator(GeneratorParams(model=str(tiny_sd), steps=2, batch_size=4))
    batches = list(gen.generate(requests(6)))
    assert [(b.index, b.start, tuple(b.images.shape)) for b in batches] == [
        (0, 0, (4, 3, 16, 16)),
        (1, 4, (2, 3, 16, 16)),
    ]
    images = torch.cat([b.images for b in batches])
    assert images.min() >= 0 and images.max() <= 1


def test_image_does_not_depend_on_its_batch(tiny_sd):
    """The same request alone, first in a batch, or last in another batch: the same image."""
    reqs = requests(7)

    def images(batch_size: int, batch: list[Request]) -> torch.Tensor:
        gen = Generator(GeneratorParams(model=str(tiny_sd), steps=2, batch_size=batch_size))
        return torch.cat([b.images for b in gen.generate(batch)])

    in_batch_of_4, alone = images(4, reqs), images(1, reqs)
    other = images(3, [reqs[6], reqs[0], reqs[3]])
    torch.testing.assert_close(in_batch_of_4, alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(other, alone[[6, 0, 3]], atol=1e-4, rtol=0)
    # ...and different seeds do give different images.
    assert (alone[0] - alone[3]).abs().max() > 1e-3


def test_scheduler_override_and_identity(tiny_sd):
    gen = Generator(GeneratorParams(model=str(tiny_sd), steps=2, scheduler="EulerDiscreteScheduler"))
    identity = gen.identity
    assert identity.scheduler == "EulerDiscreteScheduler"
    assert identity.pipeline == "StableDiffusionPipeline"
    assert (identity.width, identity.height, identity.dtype) == (16, 16, "float32")
    assert identity.model_fingerprint is not None and len(identity.model_fingerprint) == 16


def test_each_distinct_prompt_is_encoded_once_per_call(tiny_sd):
    """2 prompts x 4 candidates in one call: the text encoder sees 2 prompt rows and 1
    negative row, not 8 + 8, and every candidate still gets its own prompt's embedding."""
    from winnow.models.generator import load_pipeline

    params = GeneratorParams(model=str(tiny_sd), steps=2, batch_size=8)
    encoder = load_pipeline(params).text_encoder
    rows: list[int] = []
    handle = encoder.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        reqs = [Request(f"prompt {i // 4}", "", candidate_seed(7, f"p{i // 4}", i)) for i in range(8)]
        (batch,) = Generator(params).generate(reqs)
        ids = torch.tensor([[49406, 5, 6, 49407], [49406, 7, 8, 49407]])
        with torch.inference_mode():
            together = encoder(ids[[0, 1, 0, 0, 1]])
            alone = [encoder(ids[[k]]) for k in (0, 1, 0, 0, 1)]
    finally:
        handle.remove()
    assert rows[:2] == [2, 1]  # the call: its distinct prompts, then its one negative prompt
    assert rows[2:] == [2, 1, 1, 1, 1, 1]
    for name in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(together[name], torch.cat([a[name] for a in alone]), atol=1e-6, rtol=0)
    assert batch.images.shape[0] == 8 and (batch.images[0] - batch.images[4]).abs().max() > 1e-3


def test_latents_are_the_noise_diffusers_draws_from_the_same_seeds(tiny_sd):
    """The call's latents, built once from the CPU generators, are diffusers' own draw: the
    images equal a plain pipeline call that draws its noise itself, bit for bit."""
    from diffusers.utils.torch_utils import randn_tensor

    from winnow.models.generator import initial_latents, load_pipeline

    params = GeneratorParams(model=str(tiny_sd), steps=2, batch_size=3)
    pipe = load_pipeline(params)
    seeds = [candidate_seed(3, "p", k) for k in range(3)]

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in seeds]

    latents = initial_latents(pipe, generators(), None, None, torch.device("cpu"))
    drawn = randn_tensor(latents.shape, generators(), dtype=latents.dtype)
    assert torch.equal(latents, drawn)

    reqs = [Request("a red circle", "blurry", s) for s in seeds]
    (batch,) = Generator(params).generate(reqs)
    with torch.inference_mode():
        plain = pipe(
            prompt=[r.prompt for r in reqs],
            negative_prompt=[r.negative_prompt for r in reqs],
            generator=generators(),
            num_inference_steps=2,
            guidance_scale=params.guidance,
            output_type="pt",
        ).images
    assert torch.equal(batch.images, plain.float())
