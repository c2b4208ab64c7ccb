"""`winnow regenerate` is faithful: a row regenerates with exactly the generator settings its run
used (read from the run's manifest), bit for bit; runs without a manifest regenerate from the
rows as before."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import run_shards
from winnow.catalog.manifest import manifest_path, read_manifest
from winnow.catalog.query import read_catalog
from winnow.models import generator as generator_module
from winnow.models.errors import ModelNotFoundError, WinnowError
from winnow.models.generator import Generator
from winnow.models.testing import build_tiny_preview
from winnow.pipeline import regenerate as regenerate_module
from winnow.pipeline.config import load_config
from winnow.pipeline.regenerate import check_row

BEFORE = Path(__file__).parent / "fixtures" / "before"


@pytest.fixture
def rebuilt(monkeypatch) -> list:
    """The ``GeneratorParams`` each regeneration builds, in order."""
    made = []

    class Recording(Generator):
        def __init__(self, params) -> None:
            made.append(params)
            super().__init__(params)

    monkeypatch.setattr(regenerate_module, "Generator", Recording)
    return made


def assert_faithful(config, rebuilt: list) -> None:
    """The first and last kept rows (a full and a padded or pruned call) regenerate to their
    recorded sha256, with the run's generator settings."""
    rows = run_shards(config)
    kept = rows[rows["kept"]].sort_values(["shard_id", "batch_index", "batch_position"])
    for row in (kept.iloc[0], kept.iloc[-1]):
        check = check_row(config.run.out, row["candidate_id"], "run")
        assert check.stored == row["image_sha256"] and check.match, row["candidate_id"]
        assert rebuilt[-1] == config.generator.model_copy(
            update={"batch_size": int(row["batch_size"]), "device": "cpu", "dtype": "float32"}
        )


def save_single_file(folder: Path, out: Path) -> Path:
    """Write the diffusers pipeline at ``folder`` (the tiny test pipeline's layout) as one
    original-Stable-Diffusion-format ``.safetensors`` checkpoint, as ``from_single_file`` reads."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    attention = {i for i, kind in enumerate(unet["up_block_types"]) if "CrossAttn" in kind}
    state = {}
    for key, value in load_file(folder / "unet" / "diffusion_pytorch_model.safetensors").items():
        state["model.diffusion_model." + _unet_key(key, unet["layers_per_block"] + 1, attention)] = value
    for key, value in load_file(folder / "vae" / "diffusion_pytorch_model.safetensors").items():
        state["first_stage_model." + _vae_key(key, len(vae["up_block_types"]))] = value
    for key, value in load_file(folder / "text_encoder" / "model.safetensors").items():
        state["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out


_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}


def _rename(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _unet_key(key: str, step: int, attention: set[int]) -> str:
    """A diffusers UNet key in the original layout (``step`` = layers per block + 1)."""
    for name, original in _UNET_TOP.items():
        if key.startswith(name + "."):
            return original + key[len(name) :]
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        down, block, layer = m[1] == "down", int(m[2]), int(m[4])
        index = block * step + layer + down
        part = f"0.{_rename(m[5], _RESNET)}" if m[3] == "resnets" else f"1.{m[5]}"
        return f"{'input' if down else 'output'}_blocks.{index}.{part}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        return f"output_blocks.{block * step + step - 1}.{2 if block in attention else 1}.conv.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename(m[2], _RESNET)}"
    return key.replace("mid_block.attentions.0.", "middle_block.1.")


def _vae_key(key: str, blocks: int) -> str:
    """A diffusers VAE key in the original layout (decoder blocks are numbered in reverse)."""
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], _VAE_RESNET)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTENTION)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], _VAE_RESNET)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{_rename(m[3], _VAE_RESNET)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    return key.replace("conv_norm_out", "norm_out")


SETTINGS = {
    "channels_last": {"generator": {"channels_last": True}},
    "vae_slicing": {"generator": {"vae_slicing": True}},
    "scheduler": {"generator": {"scheduler": "EulerAncestralDiscreteScheduler"}},
    "size": {"generator": {"width": 32, "height": 16}},
    "guidance": {"generator": {"guidance": 1.0}},  # classifier-free guidance off
}


@pytest.mark.parametrize("sections", SETTINGS.values(), ids=SETTINGS.keys())
def test_a_row_regenerates_with_its_runs_setting(make_config, rebuilt, sections):
    assert_faithful(load_config(make_config(**sections)), rebuilt)


def test_a_compiled_run_regenerates_compiled(make_config, rebuilt, monkeypatch):
    # torch.compile of even the tiny UNet takes over a minute on a CPU, too slow for the
    # suite: the compilation is skipped, and what is tested is that the rebuilt generator
    # asks for it (the run itself also runs compile's warm-up call).
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **kwargs: compiled.append(kwargs))
    # Another test may have cached (and warmed) a compiled pipeline of the same model already.
    monkeypatch.setattr(generator_module, "_PIPELINES", {})
    monkeypatch.setattr(generator_module, "_WARM", set())
    assert_faithful(load_config(make_config(generator={"compile": True})), rebuilt)
    assert rebuilt[-1].compile and compiled == [{"fullgraph": True}]  # one cached pipeline


def test_a_single_file_run_regenerates_with_its_config(make_config, rebuilt, tiny_sd, tmp_path):
    checkpoint = save_single_file(tiny_sd, tmp_path / "tiny.safetensors")
    path = make_config(generator={"model": str(checkpoint), "single_file_config": str(tiny_sd)})
    config = load_config(path)
    assert_faithful(config, rebuilt)
    # Without the manifest the configs' folder is unknown, and nothing is found offline.
    run_id = read_catalog(config.run.out)["run_id"].iloc[0]
    manifest_path(config.run.out, run_id).unlink()
    kept = read_catalog(config.run.out).query("kept")["candidate_id"].iloc[0]
    with pytest.raises(ModelNotFoundError):
        check_row(config.run.out, kept)


def test_a_pruned_run_regenerates_with_its_preview_decoder(make_config, rebuilt, tmp_path):
    preview = build_tiny_preview(tmp_path / "taesd")
    path = make_config(
        generator={"steps": 4, "batch_size": 4},
        run={"candidates": 4, "shard_size": 3},
        select={"keep": 1},
        prune={"at": 0.5, "drop": 0.5, "preview": str(preview)},
    )
    config = load_config(path)
    assert_faithful(config, rebuilt)
    assert read_manifest(config.run.out, read_catalog(config.run.out)["run_id"].iloc[0]).models[
        "prune.preview"
    ].ref == str(preview)


def test_a_run_without_a_manifest_regenerates_from_its_rows(rebuilt):
    rows = read_catalog(BEFORE)
    generated = rows[(rows["source"] == "generated") & rows["kept"]]
    row = generated.iloc[-1]
    assert not manifest_path(BEFORE, row["run_id"]).exists()  # written before manifests
    check = check_row(BEFORE, row["candidate_id"], row["run_id"])
    assert check.match
    assert rebuilt[-1].model == "bundled:shapes-sd" and rebuilt[-1].steps == int(row["steps"])


def test_a_manifest_of_another_run_is_refused(make_config, tmp_path):
    config = load_config(make_config())
    rows = run_shards(config)
    path = manifest_path(config.run.out, "run")
    data = json.loads(path.read_text())
    data["config_hash"] = "0" * 16
    path.write_text(json.dumps(data))
    with pytest.raises(WinnowError, match="describes another run"):
        check_row(config.run.out, rows["candidate_id"].iloc[0], "run")
