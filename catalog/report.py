"""A self-contained HTML report of a catalog (or one run): nothing is fetched when it is opened.

- run summary: per run, prompts, candidates, kept, acceptance, model and scorers;
- per scorer (and the combined score), a histogram of kept vs rejected candidates as
  inline SVG;
- per prompt, every candidate by rank: a thumbnail embedded as a ``data:`` URI (a
  placeholder where no image was saved), its scores, kept ones framed in green, the reject
  reason of the others; a kept row ``winnow dedup`` marked a duplicate is shown beside the
  row kept over it, with their cosine.

A small inline script records on ``<body>`` whether every image decoded
(``data-images="ok/total"``) and how many errors the page raised (``data-errors``), so a
headless browser can check that the page rendered.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from winnow.catalog.query import read_catalog, score_columns
from winnow.catalog.stats import run_stats
from winnow.catalog.writer import atomic_write

THUMB = 128  # CSS pixels per thumbnail; larger images are downscaled to this before embedding
BINS = 20
KEPT_COLOUR, REJECTED_COLOUR = "#2a9d4b", "#8a8f98"

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d1f23;background:#fafafa}
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #e5e5e5;text-align:right}
td:first-child,th:first-child{text-align:left}
.hists{display:flex;flex-wrap:wrap;gap:16px}.hist{background:#fff;border:1px solid #e2e2e2;padding:6px}
.prompt{margin:14px 0;padding:8px;background:#fff;border:1px solid #e2e2e2}
.prompt h3{margin:0 0 6px;font-size:14px}.meta{color:#666;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{margin:0;width:138px;border:3px solid #ccc;padding:2px;font-size:11px;background:#fff}
.card.kept{border-color:#2a9d4b}.card.rejected{opacity:.8}
.duplicate{display:flex;gap:2px;border:2px dashed #c80;padding:2px}.card.original{opacity:.7}
.card img,.placeholder{width:128px;height:128px;display:block;image-rendering:pixelated}
.placeholder{background:repeating-linear-gradient(45deg,#eee,#eee 8px,#ddd 8px,#ddd 16px);
 color:#777;display:flex;align-items:center;justify-content:center;text-align:center}
.badge{font-weight:bold}.kept .badge{color:#2a9d4b}.rejected .badge{color:#a33}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
"""

_SCRIPT = """
(function(){
  var errors = 0;
  window.addEventListener('error', function(){ errors++; document.body.dataset.errors = errors; }, true);
  window.addEventListener('load', function(){
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function(i){ return i.complete && i.naturalWidth > 0; }).length;
    document.body.dataset.images = ok + '/' + imgs.length;
    document.body.dataset.errors = errors;
    document.body.dataset.render = 'done';
  });
})();
"""


def write_report(
    root: str | Path, out: str | Path, run_id: str | None = None, max_prompts: int = 200
) -> Path:
    """Write the report of the catalog at ``root`` (of ``run_id`` if given) to ``out``.

    At most ``max_prompts`` prompts get thumbnails (the page says how many were left out);
    the summary and histograms always cover every row.
    """
    root, out = Path(root), Path(out)
    rows = read_catalog(root, run_id)
    atomic_write(out, render(rows, root, run_id, max_prompts).encode())  # never a partial page
    return out


def render(rows: pd.DataFrame, root: Path, run_id: str | None = None, max_prompts: int = 200) -> str:
    """The report page for catalog ``rows`` (images read relative to ``root``)."""
    title = f"winnow report: run {run_id}" if run_id else f"winnow report: {root.name}"
    scores = [*score_columns(list(rows.columns)), "combined_score"]
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{_STYLE}</style></head><body data-render='pending'>",
        f"<h1>{_e(title)}</h1><div class='meta'>catalog {_e(str(root))}</div>",
        "<h2>Runs</h2>",
        _summary(rows),
        "<h2>Scores: kept vs rejected</h2>",
        f"<div class='legend'>kept<span style='background:{KEPT_COLOUR}'></span>"
        f" rejected<span style='background:{REJECTED_COLOUR}'></span></div><div class='hists'>",
        *(_histogram(rows, column) for column in scores if rows[column].notna().any()),
        "</div><h2>Candidates by prompt</h2>",
    ]
    groups = list(rows.groupby(["run_id", "prompt_id"], sort=False))
    images = _images(rows)
    for (run, _), group in groups[:max_prompts]:
        parts.append(
            _prompt(group.sort_values("rank"), root, scores, show_run=run_id is None, run=run, images=images)
        )
    if len(groups) > max_prompts:
        parts.append(f"<p class='meta'>{len(groups) - max_prompts} more prompts not shown.</p>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _summary(rows: pd.DataFrame) -> str:
    stats = run_stats(rows)
    extra = rows.groupby("run_id").agg(
        model=("model", lambda s: ", ".join(sorted(s.dropna().astype(str).unique())) or "-"),
        steps=("steps", lambda s: ", ".join(str(int(v)) for v in sorted(s.dropna().unique())) or "-"),
    )
    head = "<tr><th>run</th><th>source</th><th>prompts</th><th>candidates</th><th>kept</th>"
    head += "<th>acceptance</th><th>images</th><th>model</th><th>steps</th><th>scorers</th></tr>"
    body = []
    for rec in stats.to_dict("records"):
        run = rec["run_id"]
        in_run = rows[rows["run_id"] == run] if run in extra.index else rows
        scorers = [c.removeprefix("score_") for c in score_columns(list(rows.columns))]
        scorers = [s for s in scorers if in_run[f"score_{s}"].notna().any()]
        model, steps = (extra.loc[run, "model"], extra.loc[run, "steps"]) if run in extra.index else ("", "")
        body.append(
            f"<tr><td>{_e(run)}</td><td>{_e(rec['source'])}</td><td>{rec['prompts']}</td>"
            f"<td>{rec['candidates']}</td><td>{rec['kept']}</td><td>{rec['acceptance']:.0%}</td>"
            f"<td>{rec['images']}</td><td>{_e(model)}</td><td>{_e(steps)}</td>"
            f"<td>{_e(', '.join(scorers))}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _histogram(rows: pd.DataFrame, column: str, width: int = 300, height: int = 140) -> str:
    values = rows[column].to_numpy(dtype="float64", na_value=np.nan)
    kept = rows["kept_final"].fillna(False).to_numpy(dtype=bool)
    finite = np.isfinite(values)
    if not finite.any():
        return ""
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, BINS + 1)
    counts = [np.histogram(values[finite & mask], edges)[0] for mask in (kept, ~kept)]
    top = max(1, int(max(c.max() for c in counts)))
    pad, plot_h = 4, height - 34
    bin_w = (width - 2 * pad) / BINS
    bars = []
    for colour, shift, count in ((KEPT_COLOUR, 0.0, counts[0]), (REJECTED_COLOUR, 0.5, counts[1])):
        for i, c in enumerate(count):
            if c:
                h = plot_h * c / top
                x = pad + (i + shift) * bin_w
                bars.append(
                    f"<rect x='{x:.1f}' y='{18 + plot_h - h:.1f}' width='{bin_w / 2:.1f}' "
                    f"height='{h:.1f}' fill='{colour}'><title>{c}</title></rect>"
                )
    label = column.removeprefix("score_")
    return (
        f"<svg class='hist' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='{_e(label)} histogram'>"
        f"<text x='{pad}' y='12' font-size='12' font-weight='bold'>{_e(label)}</text>"
        f"<text x='{width - pad}' y='12' font-size='10' text-anchor='end'>max count {top}</text>"
        + "".join(bars)
        + f"<line x1='{pad}' x2='{width - pad}' y1='{18 + plot_h}' y2='{18 + plot_h}' stroke='#444'/>"
        f"<text x='{pad}' y='{height - 4}' font-size='10'>{_num(lo)}</text>"
        f"<text x='{width - pad}' y='{height - 4}' font-size='10' text-anchor='end'>{_num(hi)}</text>"
        "</svg>"
    )


def _num(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    number = float(value)  # type: ignore[arg-type]
    return f"{number:.3g}" if math.isfinite(number) else str(number)


def _images(rows: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(run_id, candidate_id) -> image path of the rows that ``winnow dedup`` kept over a
    duplicate shown in ``rows`` (the report shows the two side by side)."""
    if "dedup_kept" not in rows.columns:
        return {}
    return {
        (r.run_id, r.candidate_id): r.image_path
        for r in rows[rows["dedup_kept"].eq(True)].itertuples()
        if isinstance(r.image_path, str)
    }


def _prompt(
    group: pd.DataFrame,
    root: Path,
    scores: list[str],
    show_run: bool,
    run: str,
    images: dict[tuple[str, str], str] | None = None,
) -> str:
    first = group.iloc[0]
    meta = f"prompt {first['prompt_id']}" + (f" · run {run}" if show_run else "")
    if isinstance(first["negative_prompt"], str) and first["negative_prompt"]:
        meta += f" · negative: {first['negative_prompt']}"
    cards = "".join(_card(row, root, scores, images or {}) for _, row in group.iterrows())
    return (
        f"<div class='prompt'><h3>{_e(first['prompt'])}</h3><div class='meta'>{_e(meta)}</div>"
        f"<div class='cards'>{cards}</div></div>"
    )


def _card(row: pd.Series, root: Path, scores: list[str], images: dict[tuple[str, str], str]) -> str:
    marked = row.get("dedup_kept")
    if marked is not None and not pd.isna(marked) and not marked:  # beside the row it duplicates
        return _duplicate(row, root, scores, images)
    kept = bool(row["kept_final"])
    uri = _thumbnail(root, row["image_path"])
    cid = _e(row["candidate_id"])
    picture = (
        f"<img src='{uri}' alt='{cid}' title='{cid}' width='{THUMB}' height='{THUMB}'>"
        if uri
        else "<div class='placeholder'>no image saved</div>"
    )
    status = "kept" if kept else _e(row["reject_reason"] or "rejected")
    if pd.notna(row.get("human_decision")):  # a reviewer's decision overrules the policy's
        status = f"{'kept' if kept else 'rejected'} by reviewer"
    values = "<br>".join(
        f"{_e(c.removeprefix('score_'))} {_num(row[c])}" for c in scores if pd.notna(row.get(c))
    )
    return (
        f"<figure class='card {'kept' if kept else 'rejected'}'>{picture}<figcaption>"
        f"#{_num(row['rank'])} <span class='badge'>{status}</span><br>{values}</figcaption></figure>"
    )


def _duplicate(row: pd.Series, root: Path, scores: list[str], images: dict[tuple[str, str], str]) -> str:
    """A kept row ``winnow dedup`` marked a duplicate: its card and, beside it, the row kept
    over it (from another run or prompt too)."""
    original = (row["duplicate_of_run"], row["duplicate_of"])
    card = _card(row.drop(labels=["dedup_kept"]), root, scores, {})
    uri = _thumbnail(root, images.get(original))
    name = _e(f"{original[0]}/{original[1]}")
    picture = (
        f"<img src='{uri}' alt='{name}' title='{name}' width='{THUMB}' height='{THUMB}'>"
        if uri
        else "<div class='placeholder'>no image saved</div>"
    )
    return (
        f"<div class='duplicate'>{card}<figure class='card original'>{picture}<figcaption>"
        f"<span class='badge'>duplicate of</span> {name}<br>cosine {_num(row['dedup_cosine'])}"
        "</figcaption></figure></div>"
    )


def _thumbnail(root: Path, relpath: object) -> str | None:
    """A ``data:`` URI of the image (downscaled to ``THUMB`` px if larger), or None if absent."""
    if not isinstance(relpath, str):
        return None
    path = root / relpath
    try:
        with Image.open(path) as img:
            if max(img.size) <= THUMB and img.format == "PNG":
                data = path.read_bytes()
            else:
                thumb = img.convert("RGB")
                thumb.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
                buffer = io.BytesIO()
                thumb.save(buffer, format="PNG")
                data = buffer.getvalue()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
