"""Train/validation splits of an export, by prompt.

A split spec is ``NAME=FRACTION[,NAME=FRACTION...]`` (``validation=0.05`` or
``validation=0.05,test=0.05``); ``train`` gets the rest. A prompt's split is a function of its
``prompt_id`` (and a seed) only: ``sha256("<seed>:<prompt_id>")`` read as a number in [0, 1)
falls into the spec's intervals in order, ``train`` last. So a prompt's images are never split
across splits, the same prompt lands in the same split in every run and every later export
(rows added to the catalog move nothing), and raising a fraction only moves prompts out of
``train``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from winnow.models.errors import WinnowError

TRAIN = "train"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a dataset hub split name


class SplitError(WinnowError):
    """A split spec that cannot be parsed or does not leave room for ``train``."""


def parse_splits(spec: str | None) -> dict[str, float]:
    """``"validation=0.05,test=0.1"`` -> ``{"validation": 0.05, "test": 0.1}`` (in order;
    ``None`` or ``""`` -> no splits besides ``train``)."""
    splits: dict[str, float] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not _NAME.fullmatch(name):
            raise SplitError(
                f"split {item.strip()!r}: expected NAME=FRACTION, NAME in lowercase letters/digits/_"
            )
        if name == TRAIN or name in splits:
            raise SplitError(f"split {name!r} given twice (train is what the others leave)")
        try:
            fraction = float(value)
        except ValueError:
            raise SplitError(f"split {name!r}: fraction {value!r} is not a number") from None
        if not 0 < fraction < 1:
            raise SplitError(f"split {name!r}: fraction {fraction} is not between 0 and 1")
        splits[name] = fraction
    if sum(splits.values()) >= 1:
        raise SplitError(f"split fractions add up to {sum(splits.values()):g}: leave some for train")
    return splits


def split_of(prompt_id: str, splits: Mapping[str, float], seed: int = 0) -> str:
    """The split of prompt ``prompt_id`` under ``splits`` (from ``parse_splits``) and ``seed``."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    edge = 0.0
    for name, fraction in splits.items():
        edge += fraction
        if point < edge:
            return name
    return TRAIN
