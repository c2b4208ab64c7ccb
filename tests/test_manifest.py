"""The run manifest: written once per run before its first part, left alone on resume, never
corrupted by concurrent writers, read back as JSON with one-line errors."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from winnow.catalog.manifest import (
    FORMAT_VERSION,
    Manifest,
    ManifestError,
    ModelRef,
    PromptSource,
    external_manifest,
    find_manifest,
    generated_manifest,
    manifest_path,
    read_manifest,
    write_manifest,
)
from winnow.catalog.query import part_files, read_catalog
from winnow.flows import curate as curate_module
from winnow.models.sources import fingerprint, resolve
from winnow.pipeline.config import load_config


def manifest(run_id: str = "r1", config_hash: str = "a" * 16, minutes: int = 0) -> Manifest:
    return Manifest(
        run_id=run_id,
        source="generated",
        config={"generator": {"model": "m"}},
        config_hash=config_hash,
        models={"generator.model": ModelRef(ref="m", fingerprint="f")},
        versions={"torch": "2"},
        prompts=PromptSource(kind="template", prompts=3),
        created_at=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
    )


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_writes_its_manifest_before_its_first_part(
    make_config, tiny_sd, tiny_clip, tiny_head, monkeypatch
):
    config = load_config(make_config())
    seen = []
    process = curate_module.process_shard

    def process_shard(config, plan, **kwargs):  # the manifest is there when any shard starts
        seen.append(manifest_path(config.run.out, plan.run_id).is_file())
        return process(config, plan, **kwargs)

    monkeypatch.setattr(curate_module, "process_shard", process_shard)
    summary = curate_module.run_curate(config)
    assert seen == [True, True]

    written = read_manifest(config.run.out, summary.run_id)
    rows = read_catalog(config.run.out, summary.run_id)
    assert written.format_version == FORMAT_VERSION and written.run_id == summary.run_id
    assert written.source == "generated"
    assert written.config == config.model_dump(mode="json")  # every default filled in
    assert written.config["generator"]["channels_last"] is False
    assert written.config_hash == config.result_hash() == rows["config_hash"].iloc[0]
    assert written.versions == json.loads(rows["versions"].iloc[0])
    models = written.models
    assert models["generator.model"].ref == str(tiny_sd)
    assert models["generator.model"].fingerprint == resolve(str(tiny_sd)).fingerprint
    assert models["generator.model"].fingerprint == rows["model_fingerprint"].iloc[0]
    assert models["scorers.aesthetic.head"].fingerprint == fingerprint(tiny_head)
    assert models["scorers.clip_score.clip.pretrained"].fingerprint == fingerprint(Path(tiny_clip.pretrained))
    assert models["scorers.clip_score.clip.model"].ref == str(tiny_clip.model)
    prompt_file = Path(config.prompts.path).resolve()
    assert written.prompts == PromptSource(
        kind="path",
        file=str(prompt_file),
        sha256=hashlib.sha256(prompt_file.read_bytes()).hexdigest(),
        prompts=3,
    )

    # A resumed run finds it and leaves it as it is.
    before = manifest_path(config.run.out, summary.run_id).read_bytes()
    again = curate_module.run_curate(config)
    assert again.run_id == summary.run_id and again.skipped_shards == again.shards
    assert manifest_path(config.run.out, summary.run_id).read_bytes() == before


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_id_reused_for_other_settings_is_one_line_and_writes_nothing(make_config):
    from winnow.flows.cli import app

    path = make_config()
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(path), "--run-id", "mine"])
    assert first.exit_code == 0, first.output
    out = load_config(path).run.out
    parts = {p: p.stat().st_mtime_ns for p in part_files(out, "mine")}
    other = runner.invoke(app, ["run", str(path), "--run-id", "mine", "--steps", "3"])
    assert other.exit_code == 2
    error = other.output.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("error: run 'mine'") and error.endswith("use another run id")
    assert {p: p.stat().st_mtime_ns for p in part_files(out, "mine")} == parts


def test_an_existing_manifest_is_kept(tmp_path):
    first = write_manifest(tmp_path, manifest())
    kept = write_manifest(tmp_path, manifest(minutes=5))  # a resumed run: same config hash
    assert kept == first == read_manifest(tmp_path, "r1")
    with pytest.raises(ManifestError, match="made with other settings"):
        write_manifest(tmp_path, manifest(config_hash="b" * 16))
    assert read_manifest(tmp_path, "r1") == first


def test_concurrent_writers_in_threads_leave_one_whole_manifest(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        returned = list(pool.map(lambda k: write_manifest(tmp_path, manifest(minutes=k)), range(32)))
    on_disk = read_manifest(tmp_path, "r1")
    assert all(m == on_disk for m in returned)  # every writer after the first found it
    assert [p.name for p in (tmp_path / "runs" / "r1").iterdir()] == ["_manifest.json"]


def _write_many(root: str, minutes: int) -> None:
    for _ in range(20):
        write_manifest(root, manifest(minutes=minutes))


def test_concurrent_writer_processes_leave_one_whole_manifest(tmp_path):
    context = multiprocessing.get_context("fork")  # cheap: the module is imported already
    workers = [context.Process(target=_write_many, args=(str(tmp_path), k)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    on_disk = read_manifest(tmp_path, "r1")
    assert on_disk in [manifest(minutes=k) for k in range(4)]
    assert [p.name for p in (tmp_path / "runs" / "r1").iterdir()] == ["_manifest.json"]


def test_reading_a_missing_or_bad_manifest_is_one_line(tmp_path):
    assert find_manifest(tmp_path, "r1") is None
    with pytest.raises(ManifestError, match="has no manifest"):
        read_manifest(tmp_path, "r1")
    with pytest.raises(ManifestError, match="not a valid run id"):
        read_manifest(tmp_path, "../r1")
    path = manifest_path(tmp_path, "r1")
    path.parent.mkdir(parents=True)
    for text, why in [
        ("{not json", "not a valid run manifest"),
        (json.dumps({"run_id": "r1"}), "not a valid run manifest"),
        (manifest(run_id="r2").model_dump_json(), "describes run 'r2'"),
        (manifest().model_copy(update={"format_version": 99}).model_dump_json(), "format version 99"),
    ]:
        path.write_text(text)
        with pytest.raises(ManifestError, match=why) as err:
            read_manifest(tmp_path, "r1")
        assert "\n" not in str(err.value)


def test_prompt_sources_of_pools_and_templates(make_config, tmp_path):
    data = yaml.safe_load(make_config().read_text())

    def config(prompts: dict, **sections):
        path = tmp_path / "other.yaml"
        path.write_text(yaml.safe_dump({**data, "prompts": prompts, **sections}))
        return load_config(path)

    pool = tmp_path / "pool.txt"
    pool.write_text("a\nb\nc\n")
    written = generated_manifest(config({"pool": str(pool), "sample": 2}), "p", 2)
    assert written.prompts == PromptSource(
        kind="pool", file=str(pool.resolve()), sha256=hashlib.sha256(b"a\nb\nc\n").hexdigest(), prompts=2
    )
    by_template = config({"template": "a {red|blue} circle"}, prune={"at": 0.5, "drop": 0.3})
    written = generated_manifest(by_template, "t", 2)
    assert written.prompts == PromptSource(kind="template", prompts=2)
    assert "prune.preview" not in written.models  # previews decoded by the pipeline's own VAE


def test_an_external_manifest(tmp_path, tiny_head):
    captions = tmp_path / "captions.csv"
    captions.write_text("file,prompt\na.png,a cat\n")
    clip = {"model": "ViT-L-14", "pretrained": "openai"}
    remote = "hf://org/heads@0123abc/head.safetensors"
    config = {"scorers": {"aesthetic": {"clip": clip, "head": str(tiny_head)}, "other": {"head": remote}}}
    written = external_manifest("ext-1", config, "c" * 16, tmp_path, f"csv:{captions}", 1)
    assert written.source == "external" and written.config == config
    assert written.prompts.kind == "csv" and written.prompts.folder == str(tmp_path.resolve())
    assert written.prompts.sha256 == hashlib.sha256(captions.read_bytes()).hexdigest()
    # Architecture names and pretrained tags are no files: only the heads are model files here.
    head = ModelRef(ref=str(tiny_head), fingerprint=fingerprint(tiny_head))
    assert written.models == {
        "scorers.aesthetic.head": head,
        "scorers.other.head": ModelRef(ref=remote, fingerprint=None),
    }
    assert write_manifest(tmp_path, written) == read_manifest(tmp_path, "ext-1")
