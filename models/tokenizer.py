"""Build a Hugging Face ``CLIPTokenizer`` offline from the BPE file that open_clip ships.

Diffusers pipelines need a ``CLIPTokenizer`` (``vocab.json`` + ``merges.txt``); with no model
hub we derive both from open_clip's ``bpe_simple_vocab_16e6.txt.gz``, which defines the same
49,408-token vocabulary as OpenAI CLIP. Token ids match open_clip's ``SimpleTokenizer``
(padding uses ``<|endoftext|>`` as OpenAI's released tokenizer does).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

MAX_LENGTH = 77  # CLIP's context length; a saved pipeline fails to tokenise without it.


def build_clip_tokenizer(out_dir: str | Path) -> CLIPTokenizer:
    """Write ``vocab.json``/``merges.txt`` into ``out_dir`` and return the loaded tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as bpe:
        lines = bpe.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the slice open_clip uses
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(out, model_max_length=MAX_LENGTH)
