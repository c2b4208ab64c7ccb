"""The review web app: one prompt at a time, its candidates in rank order, a person's decisions
written as label parts (``winnow.catalog.labels``).

Routes (JSON unless said): ``GET /`` the page (static HTML/JS, no build step); ``GET
/api/prompts`` the prompts matching the filters, with the progress count; ``GET /api/prompt``
one prompt's candidates; ``POST /api/decisions`` record decisions (one label part per request);
``GET /images/<run>/<file>`` an image, only from the catalog's ``images`` folder.

Safe by default: with a token, every ``/api`` and ``/images`` request must carry it (header
``X-Winnow-Token``, or ``?token=`` for images), compared in constant time. The page builds every
text node with ``textContent``, so prompt text is never parsed as HTML.
"""

from __future__ import annotations

import hmac
import math
from importlib.resources import files
from pathlib import Path

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field

from winnow.catalog.labels import DECISIONS, Decision, latest, write_labels
from winnow.catalog.query import read_catalog, score_columns

FLOOR_REASONS = ("below_floor", "above_ceiling", "invalid_score")
STATIC = files("winnow.review") / "static"


class DecisionIn(BaseModel):
    run_id: str
    prompt_id: str
    candidate_id: str
    decision: str = Field(description="keep, reject or clear (withdraw: the policy's pick stands)")


class DecisionsIn(BaseModel):
    decisions: list[DecisionIn]


class Catalog:
    """The catalog's rows (read once: runs do not change under a review) and its labels (read
    on every request, so other reviewers' decisions show up)."""

    def __init__(self, root: Path, run_id: str | None):
        self.root = root
        rows = read_catalog(root, run_id).drop(columns=["human_decision", "kept_final"])
        rows = rows.sort_values(["run_id", "prompt_id", "rank", "candidate_index"], kind="stable")
        self.rows = rows.reset_index(drop=True)
        self.scores = ["combined_score", *score_columns(list(rows.columns))]
        self.ids = set(zip(rows["run_id"], rows["candidate_id"], strict=True))

    def state(self) -> pd.DataFrame:
        """The rows with ``human_decision`` and ``kept_final`` as of now."""
        rows = self.rows.copy()
        rows["human_decision"] = None
        labels = latest(self.root)
        if labels is not None:
            decided = {
                (r, c): h
                for r, c, h in zip(*(labels[k].to_pylist() for k in labels.column_names), strict=True)
            }
            keys = zip(rows["run_id"], rows["candidate_id"], strict=True)
            rows["human_decision"] = [decided.get(k) for k in keys]
        human = rows["human_decision"]
        rows["kept_final"] = human.eq("keep").where(human.notna(), rows["kept"].fillna(False).astype(bool))
        return rows


def _number(value) -> float | None:
    """A JSON-safe float (NaN and ±inf, which JSON lacks, become null)."""
    return float(value) if value is not None and not pd.isna(value) and math.isfinite(value) else None


def create_app(
    root: str | Path, run_id: str | None = None, token: str | None = None, reviewer: str = "reviewer"
):
    """The FastAPI app reviewing the catalog at ``root`` (only run ``run_id`` if given)."""
    catalog = Catalog(Path(root), run_id)
    images = (Path(root) / "images").resolve()
    app = FastAPI(title="winnow review", docs_url=None, redoc_url=None, openapi_url=None)

    def check_token(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("x-winnow-token") or request.query_params.get("token") or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(403, "a valid token is required (open the page with ?token=...)")

    guarded = [Depends(check_token)]

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        kinds = {"review.js": "text/javascript", "review.css": "text/css"}
        if name not in kinds:
            raise HTTPException(404)
        return Response((STATIC / name).read_bytes(), media_type=kinds[name])

    @app.get("/api/prompts", dependencies=guarded)
    def prompts(
        floor_failed: bool = False,
        score: str = "combined_score",
        min_score: float | None = None,
        max_score: float | None = None,
        run: str | None = None,
        unreviewed: bool = False,
        disagreed: bool = False,
    ) -> dict:
        """The prompts matching every filter given: a floor or ceiling failed (or a score was
        invalid) on a candidate; the best candidate's ``score`` within [min_score, max_score];
        run ``run``; no decision yet; a decision that differs from the policy's."""
        if score not in catalog.scores:
            raise HTTPException(400, f"unknown score {score!r}: one of {', '.join(catalog.scores)}")
        rows = catalog.state()
        out, reviewed = [], 0
        for (run_id_, prompt_id), group in rows.groupby(["run_id", "prompt_id"], sort=False):
            decided = group["human_decision"].notna()
            reviewed += bool(decided.any())
            policy = group["kept"].fillna(False).astype(bool)
            differs = (group["human_decision"].eq("keep") != policy) & decided
            reasons = group["reject_reason"].fillna("")
            best = group[score].iloc[0]
            if (
                (floor_failed and not reasons.str.startswith(FLOOR_REASONS).any())
                or (min_score is not None and not best >= min_score)
                or (max_score is not None and not best <= max_score)
                or (run and run_id_ != run)
                or (unreviewed and decided.any())
                or (disagreed and not differs.any())
            ):
                continue
            out.append(
                {
                    "run_id": run_id_,
                    "prompt_id": prompt_id,
                    "prompt": group["prompt"].iloc[0],
                    "reviewed": bool(decided.any()),
                }
            )
        runs = sorted(rows["run_id"].unique())
        total = rows.groupby(["run_id", "prompt_id"]).ngroups
        return {"prompts": out, "reviewed": reviewed, "total": total, "runs": runs, "scores": catalog.scores}

    @app.get("/api/prompt", dependencies=guarded)
    def prompt(run_id: str = Query(), prompt_id: str = Query()) -> dict:
        rows = catalog.state()
        group = rows[(rows["run_id"] == run_id) & (rows["prompt_id"] == prompt_id)]
        if group.empty:
            raise HTTPException(404, "no such prompt")
        candidates = [
            {
                "candidate_id": r["candidate_id"],
                "rank": int(r["rank"]),
                "kept": bool(r["kept"]),
                "human_decision": r["human_decision"],
                "kept_final": bool(r["kept_final"]),
                "reason": r["reject_reason"] if isinstance(r["reject_reason"], str) else None,
                "scores": {c.removeprefix("score_"): _number(r[c]) for c in catalog.scores},
                "image": r["image_path"] if isinstance(r["image_path"], str) else None,
            }
            for _, r in group.iterrows()
        ]
        first = group.iloc[0]
        return {"run_id": run_id, "prompt_id": prompt_id, "prompt": first["prompt"], "candidates": candidates}

    @app.post("/api/decisions", dependencies=guarded)
    def decide(body: DecisionsIn) -> dict:
        for d in body.decisions:
            if d.decision not in DECISIONS:
                raise HTTPException(400, f"decision {d.decision!r}: one of {', '.join(DECISIONS)}")
            if (d.run_id, d.candidate_id) not in catalog.ids:
                raise HTTPException(404, f"no candidate {d.candidate_id!r} in run {d.run_id!r}")
        decisions = [Decision(d.run_id, d.prompt_id, d.candidate_id, d.decision) for d in body.decisions]
        write_labels(catalog.root, decisions, reviewer)
        return {"written": len(decisions)}

    @app.get("/images/{path:path}", dependencies=guarded)
    def image(path: str) -> FileResponse:
        """A file under the catalog's images folder; ``..``, absolute paths and symlinks that
        lead out of it are refused."""
        parts = Path(path).parts
        if not parts or ".." in parts or Path(path).is_absolute():
            raise HTTPException(404)
        target = (images / path).resolve()
        if not target.is_relative_to(images) or not target.is_file():
            raise HTTPException(404)
        return FileResponse(target)

    return app
