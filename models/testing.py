"""Tiny random-weight diffusers pipelines for tests: real classes, seconds to build and run."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_pipeline(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a random-weight ``StableDiffusionPipeline`` producing 16×16 images to ``out_dir``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from winnow.models.assemble import sd_pipeline
    from winnow.models.tokenizer import build_clip_tokenizer

    out = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(out / "_tokenizer_src")
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    pipe = sd_pipeline(unet, vae, text_encoder, tokenizer, scheduler)
    pipe.save_pretrained(out)
    return out


def build_tiny_preview(out_dir: str | Path, latent_channels: int = 4, seed: int = 0) -> Path:
    """Save a random ``AutoencoderTiny`` (TAESD's classes) decoding the tiny pipeline's 8×8
    latents to 16×16 images, for ``prune.preview``."""
    from diffusers import AutoencoderTiny

    out = Path(out_dir)
    torch.manual_seed(seed)
    AutoencoderTiny(
        latent_channels=latent_channels,
        encoder_block_out_channels=(8,),
        num_encoder_blocks=(1,),
        decoder_block_out_channels=(8, 8),
        num_decoder_blocks=(1, 1),
    ).save_pretrained(out)
    return out
