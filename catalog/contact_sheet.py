"""A contact sheet: one row per prompt, its candidates by rank, kept ones framed in green."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from winnow.catalog.summary import read_run
from winnow.catalog.writer import atomic_write

CELL = 96  # pixels per candidate thumbnail
BORDER = 4
LABEL = 260  # pixels for the prompt text at the left of each row
KEPT, REJECTED, MISSING = (40, 180, 70), (90, 90, 90), (50, 50, 50)


def contact_sheet(rows: pd.DataFrame, root: Path, out: Path, max_prompts: int = 24) -> Path:
    """Draw up to ``max_prompts`` prompts of ``rows`` (catalog rows of one run) into ``out``."""
    prompts = list(dict.fromkeys(rows["prompt_id"]))[:max_prompts]
    width = LABEL + CELL * int(rows.groupby("prompt_id").size().max())
    sheet = Image.new("RGB", (width, CELL * len(prompts)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for y, prompt_id in enumerate(prompts):
        group = rows[rows["prompt_id"] == prompt_id].sort_values("rank")
        top = y * CELL
        draw.text((6, top + CELL // 2 - 8), _shorten(group["prompt"].iloc[0]), fill=(0, 0, 0), font=font)
        for x, row in enumerate(group.itertuples()):
            left = LABEL + x * CELL
            draw.rectangle([left, top, left + CELL - 1, top + CELL - 1], fill=KEPT if row.kept else REJECTED)
            inner = CELL - 2 * BORDER
            if isinstance(row.image_path, str) and (root / row.image_path).exists():
                with Image.open(root / row.image_path) as img:
                    thumb = img.convert("RGB").resize((inner, inner), Image.Resampling.NEAREST)
            else:
                thumb = Image.new("RGB", (inner, inner), MISSING)
            sheet.paste(thumb, (left + BORDER, top + BORDER))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write(out, buffer.getvalue())  # never a partial sheet, even on a full disk
    return out


def run_contact_sheet(root: Path, run_id: str) -> Path:
    """The contact sheet of run ``run_id``, written to ``<root>/contact-sheet-<run_id>.png``."""
    return contact_sheet(read_run(root, run_id), root, root / f"contact-sheet-{run_id}.png")


def _shorten(text: str, limit: int = 38) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
