"""The dataset card of an export: ``README.md`` with the YAML header the dataset hub reads.

The header names the license, size category, task, and one ``default`` config whose
``data_files`` list each split that exists (with its ``dataset_info`` features and example
counts where ``datasets`` can load the format), so ``load_dataset(DIR)`` and the hub viewer
find the splits. The body is generated from each exported run's manifest
(``winnow.catalog.manifest``): the models and their fingerprints, scorers, selection policy and
weights, counts and kept rate, versions, where the prompts came from. A run written before
manifests existed has none: the card says what is unknown and takes the generating model from
the rows. The images' license follows the generating model's; it is named when it can be read
without a network (a bundled model: winnow's own license; a local folder's or a cached hub
snapshot's model card ``license:``), else said to be unknown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import metadata
from pathlib import Path

import yaml

from winnow.catalog.export_fields import dtype
from winnow.catalog.manifest import Manifest, find_manifest
from winnow.catalog.query import query
from winnow.catalog.schema import COLUMNS
from winnow.catalog.splits import TRAIN

UNKNOWN = "unknown"
# The dataset hub's size categories: (upper bound on examples, name).
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
_FIELD_DOCS = {
    "image": "the image (PNG as generated; an external image keeps its file type)",
    "text": "the caption: the prompt",
    "split": "the split this sample is in (by prompt)",
    "original_width": "the image's width in pixels, read from the file",
    "original_height": "the image's height in pixels, read from the file",
    "aspect_ratio": "width / height",
    "bucket_width": "width of the nearest-aspect bucket of the given list (pixels)",
    "bucket_height": "height of that bucket (pixels)",
    "caption": "the prompt both images of the pair were generated from",
    "jpg_0": "the first image's file bytes (PNG as generated)",
    "jpg_1": "the second image's file bytes",
    "label_0": "1.0 when jpg_0 is the preferred image, 0.0 when jpg_1 is",
    "candidate_id_0": "jpg_0's candidate in the catalog",
    "candidate_id_1": "jpg_1's candidate in the catalog",
    "source": "who preferred: `human` (winnow review's decisions) or `policy` (kept vs not kept)",
} | {c.name: c.doc for c in COLUMNS}


@dataclass
class RunInfo:
    """What the card says about one exported run."""

    run_id: str
    source: str
    candidates: int  # in the catalog, kept or not
    kept: int  # kept_final: a reviewer's decision where there is one, else the policy's
    exported: int  # samples of this run in the export
    manifest: Manifest | None
    generators: list[tuple[str, str | None]] = field(default_factory=list)  # (model ref, fingerprint)
    license: str | None = None  # of the generating model(s); None = unknown


def run_infos(root: Path, exported: Sequence[Mapping]) -> list[RunInfo]:
    """One ``RunInfo`` per run among the ``exported`` rows (catalog rows with ``run_id``,
    ``source``, ``model``, ``model_fingerprint``), with its catalog-wide counts and manifest."""
    ids = sorted({row["run_id"] for row in exported})
    if not ids:
        return []
    listed = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    counted = query(
        root,
        "SELECT run_id, count(*) AS candidates, sum(CASE WHEN kept_final THEN 1 ELSE 0 END) AS kept "
        f"FROM catalog WHERE run_id IN ({listed}) GROUP BY run_id",
    ).to_pylist()
    counts = {c["run_id"]: (c["candidates"], c["kept"]) for c in counted}
    infos = []
    for run_id in ids:
        rows = [row for row in exported if row["run_id"] == run_id]
        manifest = find_manifest(root, run_id)
        if manifest is not None:
            generator = manifest.models.get("generator.model")
            generators = [(generator.ref, generator.fingerprint)] if generator else []
        else:  # a run from before manifests: its rows name the model
            pairs = {(r["model"], r.get("model_fingerprint")) for r in rows if r["model"]}
            generators = sorted(pairs, key=str)
        licenses = {model_license(ref, fp) for ref, fp in generators}
        candidates, kept = counts[run_id]
        infos.append(
            RunInfo(
                run_id,
                manifest.source if manifest else rows[0]["source"],
                candidates,
                kept,
                len(rows),
                manifest,
                generators,
                licenses.pop() if len(licenses) == 1 else None,  # None: unknown, or several
            )
        )
    return infos


def model_license(ref: str, fingerprint: str | None) -> str | None:
    """The license of the model ``ref`` names, read without a network, or None if unknown."""
    if ref.startswith("bundled:"):  # shipped in winnow's package, under its license
        return metadata("winnow").get("License-Expression")
    path = Path(ref).expanduser()
    if path.is_dir():
        return _card_license(path / "README.md")
    if path.exists() or "/" not in ref:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = ref.partition("@")
    cached = try_to_load_from_cache(repo, "README.md", revision=fingerprint or revision or None)
    return _card_license(Path(cached)) if isinstance(cached, str) else None


def _card_license(path: Path) -> str | None:
    """The ``license:`` of a model card's YAML header, if the file has one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("---"):
        return None
    header = text[3:].split("\n---", 1)[0]
    try:
        data = yaml.safe_load(header)
    except yaml.YAMLError:
        return None
    value = data.get("license") if isinstance(data, dict) else None
    return str(value) if isinstance(value, str | int | float) and str(value).strip() else None


def size_category(samples: int) -> str:
    """The dataset hub's size category of ``samples`` examples (``n<1K``, ``1K<n<10K``, ...)."""
    for bound, name in _SIZES:
        if samples < bound:
            return name
    return "n>1M"


def write_card(
    out: Path,
    title: str,
    fmt: str,
    splits: Mapping[str, tuple[int, int]],
    data_files: Mapping[str, str],
    features: Sequence[dict] | None,
    fields: Sequence[tuple[str, str]],
    runs: Sequence[RunInfo],
    split_spec: Mapping[str, float],
    split_seed: int,
    caption_extension: str = ".txt",
) -> Path:
    """Write ``out/README.md`` titled ``title``. ``splits``: split -> (samples, prompts), for the splits that
    have samples; ``data_files``: split -> glob under ``out``; ``features``: the card's
    ``dataset_info`` features (None: let ``datasets`` infer them); ``fields``: (name, dtype)
    of each sample's metadata, documented in the body; ``caption_extension``: kohya's captions."""
    total = sum(samples for samples, _ in splits.values())
    header: dict = _license_header(runs) | {
        "task_categories": ["text-to-image"],
        "size_categories": [size_category(total)],
        "tags": ["winnow", "synthetic", fmt],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": data_files[s]} for s in splits],
            }
        ],
    }
    if features is not None:
        header["dataset_info"] = {
            "features": list(features),
            "splits": [
                {"name": s, "num_bytes": _bytes(out, data_files[s]), "num_examples": n}
                for s, (n, _) in splits.items()
            ],
        }
    body = _body(title, fmt, splits, fields, runs, split_spec, split_seed, total, caption_extension)
    path = out / "README.md"
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body
    path.write_text(text, encoding="utf-8")
    return path


def _bytes(out: Path, pattern: str) -> int:
    """Bytes of the files under ``out`` that ``pattern`` (a data_files glob) matches."""
    files = out.glob(pattern + "/*" if pattern.endswith("**") else pattern)
    return sum(p.stat().st_size for p in files if p.is_file())


def _license_header(runs: Sequence[RunInfo]) -> dict:
    licenses = {r.license for r in runs}
    if not runs or None in licenses:
        return {"license": UNKNOWN}
    if len(licenses) == 1:
        return {"license": str(licenses.pop()).lower()}
    return {"license": "other", "license_name": "mixed: " + ", ".join(sorted(map(str, licenses)))}


def _body(
    title: str,
    fmt: str,
    splits: Mapping[str, tuple[int, int]],
    fields: Sequence[tuple[str, str]],
    runs: Sequence[RunInfo],
    split_spec: Mapping[str, float],
    split_seed: int,
    total: int,
    caption_extension: str,
) -> str:
    lines = [
        f"# {title} (winnow export)",
        "",
        f"{total} {_WHAT.get(fmt, _WHAT['samples'])} curated by winnow: each prompt's candidates were "
        "generated, scored and selected by the policy below, and every candidate was recorded in a "
        f"Parquet catalog. Exported as `{fmt}` on {datetime.now(UTC):%Y-%m-%d}.",
        "",
        "## Splits",
        "",
        "| split | samples | prompts |",
        "| --- | --- | --- |",
        *(f"| {s} | {n} | {p} |" for s, (n, p) in splits.items()),
        "",
    ]
    if split_spec:
        fractions = ", ".join(f"{s} {f:g}" for s, f in split_spec.items())
        lines.append(
            f"Split by prompt ({fractions}, {TRAIN} the rest; seed {split_seed}): a prompt's images are "
            "never in two splits, and a prompt's split depends only on its `prompt_id`, so it stays put when "
            "the catalog grows."
        )
    else:
        lines.append(f"No split was asked for: every sample is in `{TRAIN}`.")
    lines += ["", "## How the images were made and selected", ""]
    for run in runs:
        lines += _run_section(run)
    lines += ["## License", "", _license_text(runs), "", "## Fields", ""]
    lines += ["| field | type | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{n}` | {t} | {_FIELD_DOCS.get(n, _score_doc(n))} |" for n, t in fields]
    lines += ["", "## Loading", "", _LOADING[fmt].replace("{caption_extension}", caption_extension), ""]
    return "\n".join(lines)


def _score_doc(name: str) -> str:
    return f"{name.removeprefix('score_')} score, higher is better" if name.startswith("score_") else ""


def _run_section(run: RunInfo) -> list[str]:
    rate = run.kept / run.candidates if run.candidates else 0.0
    lines = [
        f"### Run `{run.run_id}` ({run.source})",
        "",
        f"- {run.candidates} candidates, {run.kept} kept (kept rate {rate:.1%}); "
        f"{run.exported} in this export.",
    ]
    m = run.manifest
    if m is None:
        models = (
            ", ".join(f"`{ref}` (fingerprint `{fp or UNKNOWN}`)" for ref, fp in run.generators) or UNKNOWN
        )
        lines += [
            f"- Generating model (from the rows): {models or UNKNOWN}.",
            "- This run has no manifest (written before manifests existed): its scorers, selection "
            "policy and weights, library versions and prompt source are unknown.",
            "",
        ]
        return lines
    select = m.config.get("select") or {}
    weights = ", ".join(f"{k} {v:g}" for k, v in (select.get("weights") or {}).items()) or "none given"
    lines += [
        f"- Selection weights: {weights}; keep {select.get('keep', UNKNOWN)} per prompt.",
        f"- Prompts: {m.prompts.prompts} from {m.prompts.kind}"
        + (f" `{Path(m.prompts.file).name}` (sha256 `{m.prompts.sha256}`)" if m.prompts.file else "")
        + ".",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(m.versions.items())) + ".",
        f"- Config hash `{m.config_hash}`; manifest written {m.created_at:%Y-%m-%d %H:%M} UTC.",
        "",
        "| model | reference | fingerprint |",
        "| --- | --- | --- |",
        *(f"| {k} | `{ref.ref}` | `{ref.fingerprint or UNKNOWN}` |" for k, ref in m.models.items()),
        "",
    ]
    for title, key in (("Generator", "generator"), ("Scorers", "scorers"), ("Selection policy", "select")):
        if m.config.get(key):
            lines += [f"{title}:", "", "```yaml", _yaml(m.config[key]).rstrip(), "```", ""]
    return lines


def _yaml(value: object) -> str:
    return yaml.safe_dump(json.loads(json.dumps(value)), sort_keys=False, allow_unicode=True)


def _license_text(runs: Sequence[RunInfo]) -> str:
    parts = []
    for run in runs:
        models = ", ".join(f"`{ref}`" for ref, _ in run.generators)
        if run.source == "external":
            parts.append(
                f"Run `{run.run_id}` scored existing images: their license is their own ({UNKNOWN} here)."
            )
        elif run.license is None:
            parts.append(
                f"Run `{run.run_id}`: generated by {models or 'an unrecorded model'}, license {UNKNOWN}."
            )
        else:
            parts.append(f"Run `{run.run_id}`: generated by {models}, license `{run.license}`.")
    return (
        "The images' license follows the license of the model that generated them (check its terms "
        "before training on or sharing them). " + " ".join(parts)
    )


def fields_of(schema_fields: Sequence) -> list[tuple[str, str]]:
    """(name, datasets dtype) of Arrow fields, for the card's field table."""
    return [(f.name, "image" if f.name == "image" else dtype(f.type)) for f in schema_fields]


# What a sample of each format is, for the card's first line.
_WHAT = {
    "samples": "text-to-image samples (image + caption)",
    "pairs": "preference pairs (two images of one prompt, the preferred one marked by `label_0`)",
}

_LOADING = {
    "imagefolder": (
        '`datasets.load_dataset(DIR)` (or `load_dataset("imagefolder", data_dir=DIR)`): one folder per '
        "split with the images and a `metadata.jsonl` (`file_name` + the fields above). diffusers' "
        "`train_text_to_image.py --train_data_dir DIR/train --caption_column text` trains on `train` (it "
        "reads every file under the folder it is given: `DIR` would take in the other splits too)."
    ),
    "webdataset": (
        '`datasets.load_dataset(DIR)` or `webdataset.WebDataset("DIR/train-{000000..N}.tar")`: tar shards '
        "named `<split>-NNNNNN.tar`; each sample is three members `<run_id>/<candidate_id>.png` (the "
        "image; an external image keeps its suffix), `.txt` (the caption) and `.json` (the fields "
        "above), so a sample's key is `<run_id>/<candidate_id>`."
    ),
    "parquet": (
        '`datasets.load_dataset(DIR)` (or `load_dataset("parquet", data_files="DIR/data/train-*.parquet")`): '
        "Parquet shards `data/<split>-NNNNN-of-NNNNN.parquet` whose `image` column holds the image bytes "
        "as `datasets` writes them (struct `{bytes, path}`), followed by the fields above."
    ),
    "pairs": (
        "`datasets.load_dataset(DIR)`: Parquet shards `data/<split>-NNNNN-of-NNNNN.parquet` of preference "
        "pairs in the layout of diffusers' Diffusion-DPO script (`train_diffusion_dpo.py --dataset_name "
        "DIR`: `caption`, `jpg_0`, `jpg_1`, `label_0`)."
    ),
    "kohya": (
        "kohya-ss/sd-scripts: `--train_data_dir DIR/train --caption_extension {caption_extension}` (the "
        "captions' extension here; sd-scripts defaults to `.caption`). "
        "Each split folder holds one subset folder `<repeats>_<name>` with each image and its caption "
        "side by side; the other splits' folders are kept apart from `train`."
    ),
}
