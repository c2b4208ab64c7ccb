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
