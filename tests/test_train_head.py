"""``winnow train-head``: a preference head trained on stored embeddings from a reviewer's
decisions loads through the ordinary aesthetic head scorer and ranks held-out preferred
candidates above rejected ones; the same seed gives the same file; bad input is one line."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import torch
from safetensors import safe_open

from tests.helpers import invoke
from winnow.catalog.embeddings import embeddings_path, write_embeddings
from winnow.catalog.labels import Decision, write_labels
from winnow.catalog.manifest import Embedding, Manifest, ModelRef, PromptSource, write_manifest
from winnow.catalog.schema import Row, candidate_id, table
from winnow.catalog.writer import image_relpath, part_path, write_part
from winnow.scoring.aesthetic import AestheticScorer
from winnow.scoring.holdout import holdout_mask

T0 = datetime(2025, 1, 1, tzinfo=UTC)
WIDTH, N = 16, 6
CLIP = {"model": "bundled:shapes-clip", "pretrained": None}


def world(prompts: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(prompts * N, WIDTH) L2-normalised embeddings, a clip_score that knows nothing of the
    reviewer's taste, and decisions keeping the two candidates of each prompt furthest along a
    hidden direction (separable: a linear head can learn it)."""
    rng = np.random.default_rng(seed)
    taste = np.eye(WIDTH)[3]
    x = rng.normal(size=(prompts * N, WIDTH))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    decisions = []
    for p in range(prompts):
        order = np.argsort(-(x[p * N : (p + 1) * N] @ taste))
        decisions += ["keep" if i in order[:2] else "reject" for i in range(N)]
    return x, rng.normal(size=prompts * N), decisions


def make_run(root, run_id: str = "r1", prompts: int = 60, seed: int = 0, clip=CLIP, stored: str = "all"):
    """A run with labels on every candidate and (unless ``stored`` is none) stored embeddings:
    ``all`` of them, or only the policy's kept ones (``kept``)."""
    x, clip_score, decisions = world(prompts, seed)
    rows, labels, ids = [], [], []
    for k in range(prompts * N):
        prompt_id, i = f"p{k // N:04d}", k % N
        cid = candidate_id(prompt_id, i)
        rows.append(
            Row(
                run_id=run_id, source="generated", shard_id="0000", prompt_id=prompt_id,
                candidate_id=cid, candidate_index=i, prompt=f"prompt {prompt_id}", negative_prompt="",
                prompt_meta="{}", config_hash="h", rank=i + 1, kept=i == 0,
                reject_reason=None if i == 0 else "not_top_k", image_path=image_relpath(run_id, cid),
                image_sha256="0" * 64, combined_score=float(N - i), created_at=T0,
                scores={"clip_score": float(clip_score[k])},
            )
        )  # fmt: skip
        labels.append(Decision(run_id, prompt_id, cid, decisions[k]))
        ids.append(cid)
    write_part(part_path(root, run_id, "0000"), table(rows, ["clip_score"]))
    if stored == "all":
        write_embeddings(embeddings_path(root, run_id, "0000"), ids, x)
    elif stored == "kept":
        write_embeddings(embeddings_path(root, run_id, "0000"), ids[::N], x[::N])
    select = {"keep": 1, "weights": {"clip_score": 1.0}, "normalize": "zscore"}
    write_manifest(
        root,
        Manifest(
            run_id=run_id, source="generated", config={"scorers": {"clip_score": {}}, "select": select},
            config_hash="h", models={"generator.model": ModelRef(ref="m", fingerprint="f")},
            versions={}, prompts=PromptSource(kind="template", prompts=prompts), created_at=T0,
            embedding=None if stored == "none" else Embedding(clip=clip, stored="all"),
        ),
    )  # fmt: skip
    write_labels(root, labels, "ann", now=T0)
    return root


def agreement_line(output: str, what: str) -> float:
    line = next(line for line in output.splitlines() if f"top-1 agreement, {what}" in line)
    hits, n = line.split(": ")[1].split(" = ")[0].split("/")
    return int(hits) / int(n)


def test_trained_head_loads_as_an_aesthetic_head_and_ranks_held_out_preferences(tmp_path):
    root = make_run(tmp_path / "cat", prompts=80)
    head = tmp_path / "taste.safetensors"
    result = invoke("train-head", root, "--out", head)
    assert result.exit_code == 0, result.output
    assert agreement_line(result.output, "trained head") >= 0.9
    assert agreement_line(result.output, "current policy") <= 0.6  # clip_score knows nothing of it
    assert '"bundled:shapes-clip"' in result.output and str(head.resolve()) in result.output

    # The file is an ordinary aesthetic head: held-out kept candidates score above rejected ones.
    scorer = AestheticScorer(AestheticScorer.Params(clip=CLIP, head=str(head)), torch.device("cpu"))
    x, _, decisions = world(80, seed=0)
    scores = scorer.score_embeddings(torch.as_tensor(x, dtype=torch.float32)).numpy()
    kept = np.array(decisions) == "keep"
    held = holdout_mask([f"p{p:04d}" for p in range(80)], 0.3, seed=0)
    wins = []
    for p in np.flatnonzero(held):
        block = slice(p * N, (p + 1) * N)
        s, k = scores[block], kept[block]
        wins += [a > b for a in s[k] for b in s[~k]]
    assert len(wins) >= 5 * 8 and np.mean(wins) >= 0.9
    with safe_open(str(head), "pt") as f:
        assert set(f.keys()) == {f"layers.{i}.{w}" for i in (0, 2, 4, 6, 7) for w in ("weight", "bias")}
        assert json.loads(f.metadata()["winnow"])["runs"] == ["r1"]


def test_same_seed_same_head_and_two_runs_of_one_clip_train_together(tmp_path):
    root = make_run(tmp_path / "cat", prompts=40)
    make_run(root, run_id="r2", prompts=40, seed=1)
    first, again, other = (tmp_path / f"{n}.safetensors" for n in ("a", "b", "c"))
    for path, seed in ((first, 0), (again, 0), (other, 1)):
        result = invoke("train-head", root, "--out", path, "--seed", seed)
        assert result.exit_code == 0, result.output
        assert "runs r1, r2" in result.output
    assert first.read_bytes() == again.read_bytes() and first.read_bytes() != other.read_bytes()
    only = invoke("train-head", root, "--out", first, "--run", "r2")
    assert only.exit_code == 0 and "runs r2:" in only.output


def test_errors_are_one_line(tmp_path):
    def fails(root, *args, out="h.safetensors") -> str:
        result = invoke("train-head", root, "--out", tmp_path / out, *args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / out).exists()
        return result.output

    empty = make_run(tmp_path / "unlabelled", prompts=3)
    for part in (empty / "labels").iterdir():
        part.unlink()
    assert "no labels" in fails(empty)
    assert "run.embeddings: none" in fails(make_run(tmp_path / "none", stored="none"))
    mixed = make_run(tmp_path / "mixed")
    make_run(mixed, run_id="r2", clip={"model": "ViT-B-32", "pretrained": "openai"})
    assert "different CLIPs" in fails(mixed)
    assert "rejected ones too" in fails(make_run(tmp_path / "kept", stored="kept"))
    assert "needs at least 5 on each side" in fails(make_run(tmp_path / "few", prompts=6))
    assert ".safetensors" in fails(make_run(tmp_path / "ok"), out="h.pth")
