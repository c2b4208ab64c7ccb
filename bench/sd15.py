"""Random-weight models with Stable Diffusion 1.5's and LAION's architectures, built offline.

Throughput and FLOPs depend on the architecture, not on the weights, so a random UNet with
SD 1.5's config costs what the real one costs (no download, nothing licensed). ``tiny=True``
builds the same structure at toy widths so the GPU benchmark can be tried on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from winnow.scoring.clip import ClipSpec

# runwayml/stable-diffusion-v1-5, unet/config.json and vae/config.json (the fields that shape compute).
UNET = {
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE = {
    "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
# openai/clip-vit-large-patch14's text tower, as SD 1.5 uses it.
TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}

TINY_UNET = {**UNET, "sample_size": 8, "block_out_channels": (8, 16, 16, 16), "cross_attention_dim": 16}
TINY_UNET |= {"attention_head_dim": 2, "norm_num_groups": 4, "layers_per_block": 1}
TINY_VAE = {**VAE, "sample_size": 64, "block_out_channels": (8, 16, 16, 16), "norm_num_groups": 4}
TINY_VAE |= {"layers_per_block": 1}
TINY_TEXT = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def build_sd15(out_dir: str | Path, tiny: bool = False, device: str = "cpu") -> Path:
    """Save a random ``StableDiffusionPipeline`` with SD 1.5's architecture (512² images) to
    ``out_dir`` in fp16 (init on ``device``: a CUDA device initialises 1 B parameters in seconds)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from winnow.models.assemble import sd_pipeline
    from winnow.models.tokenizer import build_clip_tokenizer

    out = Path(out_dir)
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(out / "_tokenizer_src")
    with torch.device(device):
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else UNET))
        vae = AutoencoderKL(**(TINY_VAE if tiny else VAE))
        text = CLIPTextConfig(
            **(TINY_TEXT if tiny else TEXT),
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        )
        text_encoder = CLIPTextModel(text)
    # SD 1.5's scheduler config.
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipe = sd_pipeline(unet, vae, text_encoder, tokenizer, scheduler)
    pipe.to(torch.float16).save_pretrained(out)
    return out


def build_taesd(out_dir: str | Path, tiny: bool = False) -> Path:
    """Save a random ``AutoencoderTiny`` with TAESD's architecture (diffusers' defaults, as
    madebyollin/taesd ships it for SD 1.5) in fp16: ``prune.preview``'s cheap decoder."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    size = {"encoder_block_out_channels": (8,) * 4, "decoder_block_out_channels": (8,) * 4} if tiny else {}
    AutoencoderTiny(**size).to(torch.float16).save_pretrained(out_dir)
    return Path(out_dir)


def build_clip_and_head(out_dir: str | Path, tiny: bool = False) -> tuple[ClipSpec, Path]:
    """A random open_clip ViT-L-14 (the LAION head's CLIP) saved as fp16 safetensors, and a
    random head in LAION's layout (768-1024-128-64-16-1); toy sizes with ``tiny``."""
    from safetensors.torch import save_file

    from winnow.scoring.testing import build_tiny_aesthetic_head, build_tiny_clip

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tiny:
        spec = build_tiny_clip(out)
        return spec, build_tiny_aesthetic_head(out / "head.safetensors", dim=32)
    import open_clip

    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = open_clip.create_model("ViT-L-14")
    weights = out / "vit-l-14.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(weights))
    head = build_tiny_aesthetic_head(out / "head.safetensors", dim=768, hidden=(1024, 128, 64, 16))
    return ClipSpec(model="ViT-L-14", pretrained=str(weights)), head
