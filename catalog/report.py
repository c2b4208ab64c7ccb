"""A self-contained HTML report of a catalog (or one run): nothing is fetched when it is opened.

- run summary: per run, prompts, candidates, kept, acceptance, model and scorers;
- per scorer (and the combined score), a histogram of kept vs rejected candidates as
  inline SVG;
- per prompt, every candidate by rank: a thumbnail embedded as a ``data:`` URI (a
  placeholder where no image was saved), its scores, kept ones framed in green, the reject
  reason of the others; a kept row ``winnow dedup`` marked a duplicate is shown beside the
  row kept over it, with their cosine. At most ``MAX_PROMPTS`` prompts (``--max-prompts``);
  past it, a sample: the prompts with the smallest prompt ids, and the page says so.

The summary and histograms are aggregated by DuckDB over every row (``winnow.catalog.query``);
only the shown prompts' rows reach pandas, so memory stays bounded whatever the catalog's size.

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

import duckdb
import pandas as pd
from PIL import Image

from winnow.catalog.query import VIEW, connect, score_columns
from winnow.catalog.stats import ALL, run_stats
from winnow.catalog.writer import atomic_write

THUMB = 128  # CSS pixels per thumbnail; larger images are downscaled to this before embedding
BINS = 20
MAX_PROMPTS = 200  # prompts shown with their candidates; past it, a sample (module docstring)
# what a prompt's cards show, besides its scores and the dedup columns
CARD_COLUMNS = ("run_id", "prompt_id", "candidate_id", "prompt", "negative_prompt", "rank", "kept_final",
                "human_decision", "reject_reason", "image_path",
                "shard_id", "batch_index", "batch_position")  # fmt: skip
DEDUP_COLUMNS = ("dedup_kept", "duplicate_of_run", "duplicate_of", "dedup_cosine")
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
    root: str | Path, out: str | Path, run_id: str | None = None, max_prompts: int = MAX_PROMPTS
) -> Path:
    """Write the report of the catalog at ``root`` (of ``run_id`` if given) to ``out``.

    At most ``max_prompts`` prompts get thumbnails (past it, a sample, and the page says so);
    the summary and histograms always cover every row.
    """
    out = Path(out)
    atomic_write(out, render(root, run_id, max_prompts).encode())  # never a partial page
    return out


def render(root: str | Path, run_id: str | None = None, max_prompts: int = MAX_PROMPTS) -> str:
    """The report page of the catalog at ``root`` (of ``run_id`` only if given)."""
    root = Path(root)
    title = f"winnow report: run {run_id}" if run_id else f"winnow report: {root.name}"
    with connect(root, run_id) as con:
        columns = con.sql(f"SELECT * FROM {VIEW} LIMIT 0").columns
        scores = [*score_columns(columns), "combined_score"]
        stats = run_stats(con)
        summary = _summary(con, stats, score_columns(columns))
        histograms = _histograms(con, scores)
        total = int(stats.loc[stats["run_id"] != ALL, "prompts"].sum())
        rows = _shown_rows(
            con, [c for c in (*CARD_COLUMNS, *DEDUP_COLUMNS, *scores) if c in columns], max_prompts
        )
        images = _images(con, rows)
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{_STYLE}</style></head><body data-render='pending'>",
        f"<h1>{_e(title)}</h1><div class='meta'>catalog {_e(str(root))}</div>",
        "<h2>Runs</h2>",
        summary,
        "<h2>Scores: kept vs rejected</h2>",
        f"<div class='legend'>kept<span style='background:{KEPT_COLOUR}'></span>"
        f" rejected<span style='background:{REJECTED_COLOUR}'></span></div><div class='hists'>",
        *histograms,
        "</div><h2>Candidates by prompt</h2>",
    ]
    groups = list(rows.groupby(["run_id", "prompt_id"], sort=False))
    if total > len(groups):
        parts.append(
            f"<p class='meta sample'>Showing a sample of {len(groups)} of {total} prompts: those with the "
            "smallest prompt ids (content hashes, so an even sample); "
            f"{total - len(groups)} more prompts not shown (raise --max-prompts to show more).</p>"
        )
    for (run, _), group in groups:
        parts.append(
            _prompt(group.sort_values("rank"), root, scores, show_run=run_id is None, run=run, images=images)
        )
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)


def _shown_rows(con: duckdb.DuckDBPyConnection, columns: list[str], max_prompts: int) -> pd.DataFrame:
    """The ``columns`` of the rows of at most ``max_prompts`` (run, prompt) pairs: those with the
    smallest prompt ids, all of them when there are fewer, in catalog order (run, shard, call).

    Prompt ids are content hashes, so the smallest are an even sample that stays the same as
    the catalog grows; and a compacted run is sorted by prompt id, so DuckDB reads only the
    row groups of this prompt id range."""
    chosen = con.sql(
        f"SELECT DISTINCT run_id, prompt_id FROM {VIEW} ORDER BY prompt_id, run_id LIMIT {int(max_prompts)}"
    ).to_arrow_table()
    if chosen.num_rows == 0:
        return pd.DataFrame(columns=columns)
    con.register("chosen", chosen)
    ids = chosen["prompt_id"].to_pylist()
    select = ", ".join(f'c."{c}"' for c in columns)
    return con.execute(
        f"SELECT {select} FROM {VIEW} c SEMI JOIN chosen USING (run_id, prompt_id) "
        "WHERE c.prompt_id BETWEEN $lo AND $hi "  # a range the Parquet statistics can skip by
        "ORDER BY c.run_id, c.shard_id, c.batch_index, c.batch_position, c.prompt_id",
        {"lo": min(ids), "hi": max(ids)},
    ).df()


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _summary(con: duckdb.DuckDBPyConnection, stats: pd.DataFrame, scorers: list[str]) -> str:
    """The runs table: ``stats`` (``run_stats``) with each run's models, steps and the scorers
    that scored it (the total row: every scorer)."""
    present = ", ".join(f'count("{c}") FILTER (WHERE NOT isnan("{c}")) > 0' for c in scorers)
    extra = {
        run: (models, steps, flags)
        for run, models, steps, *flags in con.sql(
            "SELECT run_id, list_sort(list(DISTINCT model::VARCHAR) FILTER (WHERE model IS NOT NULL)), "
            "list_sort(list(DISTINCT steps) FILTER (WHERE steps IS NOT NULL))"
            f"{', ' + present if present else ''} FROM {VIEW} GROUP BY run_id"
        ).fetchall()
    }
    everywhere = [any(flags[i] for _, _, flags in extra.values()) for i in range(len(scorers))]
    head = "<tr><th>run</th><th>source</th><th>prompts</th><th>candidates</th><th>kept</th>"
    head += "<th>acceptance</th><th>images</th><th>model</th><th>steps</th><th>scorers</th></tr>"
    body = []
    for rec in stats.to_dict("records"):
        run = rec["run_id"]
        models, steps, flags = extra.get(run, (None, None, everywhere))
        model = "" if models is None else ", ".join(models) or "-"
        step = "" if steps is None else ", ".join(str(int(v)) for v in steps) or "-"
        names = [c.removeprefix("score_") for c, found in zip(scorers, flags, strict=True) if found]
        body.append(
            f"<tr><td>{_e(run)}</td><td>{_e(rec['source'])}</td><td>{rec['prompts']}</td>"
            f"<td>{rec['candidates']}</td><td>{rec['kept']}</td><td>{rec['acceptance']:.0%}</td>"
            f"<td>{rec['images']}</td><td>{_e(model)}</td><td>{_e(step)}</td>"
            f"<td>{_e(', '.join(names))}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _histograms(con: duckdb.DuckDBPyConnection, scores: list[str]) -> list[str]:
    """Per score column with a finite value: its histogram (``BINS`` equal bins from its finite
    minimum to its maximum), kept vs rejected by ``kept_final``; two scans of the view."""
    bounds = [f'{f}("{c}"::DOUBLE) FILTER (WHERE isfinite("{c}"))' for c in scores for f in ("min", "max")]
    (ranges,) = con.sql(f"SELECT {', '.join(bounds)} FROM {VIEW}").fetchall()
    edges = {}
    for column, lo, hi in zip(scores, ranges[::2], ranges[1::2], strict=True):
        if lo is not None:
            edges[column] = (lo - 0.5, hi + 0.5) if hi <= lo else (lo, hi)
    if not edges:
        return []
    counts = {(column, kept): [0] * BINS for column in edges for kept in (True, False)}
    bins = [
        # np.histogram's bins: [lo, lo + w), ..., [hi - w, hi] (the last one closed)
        f'histogram(CASE WHEN isfinite("{c}") '  # null (left out) otherwise
        f'THEN least(floor(("{c}"::DOUBLE - {lo!r}) * {BINS} / {hi - lo!r}), {BINS - 1})::INTEGER END)'
        for c, (lo, hi) in edges.items()
    ]
    sql = f"SELECT coalesce(kept_final, false), {', '.join(bins)} FROM {VIEW} GROUP BY 1"
    for kept, *maps in con.sql(sql).fetchall():
        for column, found in zip(edges, maps, strict=True):
            for k, n in (found or {}).items():
                counts[column, kept][k] = n
    return [_histogram(c, lo, hi, counts[c, True], counts[c, False]) for c, (lo, hi) in edges.items()]


def _histogram(
    column: str,
    lo: float,
    hi: float,
    kept: list[int],
    rejected: list[int],
    width: int = 300,
    height: int = 140,
) -> str:
    """An inline SVG of the bin counts ``kept`` and ``rejected`` of ``column`` over [lo, hi]."""
    top = max(1, *kept, *rejected)
    pad, plot_h = 4, height - 34
    bin_w = (width - 2 * pad) / BINS
    bars = []
    for colour, shift, count in ((KEPT_COLOUR, 0.0, kept), (REJECTED_COLOUR, 0.5, rejected)):
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


def _images(con: duckdb.DuckDBPyConnection, rows: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(run_id, candidate_id) -> image path of the rows that ``winnow dedup`` kept over a
    duplicate shown in ``rows`` (the report shows the two side by side)."""
    if "dedup_kept" not in rows.columns:
        return {}
    duplicates = rows[rows["dedup_kept"].eq(False)]
    if duplicates.empty:
        return {}
    originals = pd.DataFrame(
        {"run_id": duplicates["duplicate_of_run"], "candidate_id": duplicates["duplicate_of"]}
    )
    con.register("originals", originals)
    found = con.sql(
        f"SELECT c.run_id, c.candidate_id, c.image_path FROM {VIEW} c SEMI JOIN originals "
        "USING (run_id, candidate_id) WHERE c.dedup_kept AND c.image_path IS NOT NULL"
    ).fetchall()
    return {(run, candidate): path for run, candidate, path in found}


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
