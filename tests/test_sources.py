import time

import pytest

from winnow.models.errors import ModelNotFoundError
from winnow.models.generator import GeneratorParams, load_pipeline
from winnow.models.sources import resolve


def test_local_dir_and_fingerprint(tiny_sd):
    source = resolve(str(tiny_sd))
    assert source.kind == "local_dir" and source.path == tiny_sd
    assert source.fingerprint == resolve(str(tiny_sd)).fingerprint


def test_loading_is_cached_per_process(tiny_sd):
    params = GeneratorParams(model=str(tiny_sd))
    assert load_pipeline(params) is load_pipeline(params.model_copy(update={"steps": 3}))


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("someone/some-model@v1", r"not on this machine.*hub is unreachable.*hf download someone/some-model"),
        ("./missing-folder", "no such local path"),
        ("bundled:nope", "unknown bundled model 'nope'"),
    ],
)
def test_missing_models_give_one_actionable_line(ref, message):
    began = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=message) as err:
        resolve(ref)
    assert "\n" not in str(err.value)
    assert time.perf_counter() - began < 30  # offline is detected, not waited out


def test_a_single_model_repo_offline_is_one_line_too():
    with pytest.raises(
        ModelNotFoundError, match=r"not on this machine.*hf download madebyollin/taesd"
    ) as err:
        resolve("madebyollin/taesd", pipeline=False)
    assert "\n" not in str(err.value)


def test_non_checkpoint_file(tmp_path):
    path = tmp_path / "weights.bin.txt"
    path.write_text("x")
    with pytest.raises(ModelNotFoundError, match="not a checkpoint"):
        resolve(str(path))


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(ModelNotFoundError, match="could not be loaded"):
        load_pipeline(GeneratorParams(model=str(tmp_path)))
