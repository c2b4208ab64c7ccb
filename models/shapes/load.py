"""Load the shipped shapes models through the same library entry points real models use."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from safetensors.torch import load_file

from models.shapes import AESTHETIC_PATH, CLIP_CHECKPOINT, CLIP_DIR, CLIP_MODEL_NAME, SD_DIR
from models.shapes.train_aesthetic import AestheticHead


def load_pipeline(path: Path = SD_DIR) -> DiffusionPipeline:
    """The shapes Stable Diffusion pipeline in float32 on CPU."""
    pipe = AutoPipelineForText2Image.from_pretrained(path, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_clip(
    config_dir: Path = CLIP_DIR, checkpoint: Path = CLIP_CHECKPOINT
) -> tuple[open_clip.CLIP, object, object]:
    """``(model, preprocess, tokenizer)`` via ``add_model_config`` + ``create_model_and_transforms``."""
    open_clip.add_model_config(config_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_MODEL_NAME, pretrained=str(checkpoint))
    return model.eval(), preprocess, open_clip.get_tokenizer(CLIP_MODEL_NAME)


def load_aesthetic(path: Path = AESTHETIC_PATH) -> AestheticHead:
    """The LAION-layout head (float32); input dim read from ``layers.0.weight``."""
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    head = AestheticHead(state["layers.0.weight"].shape[1])
    head.load_state_dict(state)
    return head.eval()
