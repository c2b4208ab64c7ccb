"""Assemble a text-to-image ``StableDiffusionPipeline`` from components built in code (the
tiny test models, the bundled shapes models, the SD 1.5-shaped benchmark models)."""

from __future__ import annotations

from typing import Any


def sd_pipeline(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any) -> Any:
    """The standard pipeline over these components, without safety checker or feature extractor."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
