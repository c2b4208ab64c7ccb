"""The bundled "shapes" model family: a procedural world, its exact oracle, and the tiny
diffusion / CLIP / aesthetic models trained on it (weights under ``models/shapes/weights``)."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SD_DIR = WEIGHTS_DIR / "sd"
CLIP_DIR = WEIGHTS_DIR / "clip"
CLIP_MODEL_NAME = "shapes-clip"
CLIP_CONFIG = CLIP_DIR / "shapes-clip.json"
CLIP_CHECKPOINT = CLIP_DIR / "shapes-clip.safetensors"
AESTHETIC_PATH = WEIGHTS_DIR / "aesthetic.safetensors"
