"""Random-weight components for tests, benchmarks and offline demos (as diffusers' own tests build them).

Nothing here downloads anything: models are built from configs in code and use the real CLIP tokenizer.
``tiny_*`` shapes run in milliseconds on a CPU; ``full_size_*`` shapes match the real models for benchmarks.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .positions import stretch_text_encoder
from .tokenizer import END_OF_TEXT, START_OF_TEXT, VOCAB_SIZE, load_tokenizer


def clip_text_config(
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 37,
    projection_dim: int = 32,
    max_position_embeddings: int = 77,
    hidden_act: str = "quick_gelu",
) -> CLIPTextConfig:
    """A CLIP text config with the real vocabulary size, so the real tokenizer's ids fit."""
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        projection_dim=projection_dim,
        max_position_embeddings=max_position_embeddings,
        hidden_act=hidden_act,
        bos_token_id=START_OF_TEXT,
        eos_token_id=END_OF_TEXT,
        pad_token_id=0,
    )


def random_text_encoder(config: CLIPTextConfig, with_projection: bool = False, seed: int = 0, long: bool = False):
    """A random CLIP text encoder; ``long`` stretches it to 248 positions (KPS) like a Long-CLIP encoder."""
    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = model_class(config).eval()
    return stretch_text_encoder(model) if long else model


def tiny_sd_components(long_clip: bool = True, cross_attention_dim: int = 32, seed: int = 0) -> dict:
    """Tiny SD 1.x components: UNet, VAE, DDIM scheduler, CLIP-L-like encoder (248 positions if ``long_clip``)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=2,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    text_encoder = random_text_encoder(clip_text_config(hidden_size=cross_attention_dim), seed=seed, long=long_clip)
    return {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder": text_encoder,
        "tokenizer": load_tokenizer(248 if long_clip else 77),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def full_size_clip_l_config(max_position_embeddings: int = 248) -> CLIPTextConfig:
    """CLIP ViT-L/14's text tower (as SD 1.x's ``text_encoder`` and Long-CLIP-L)."""
    return clip_text_config(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        projection_dim=768,
        max_position_embeddings=max_position_embeddings,
    )


def full_size_sd15_unet() -> UNet2DConditionModel:
    """SD 1.5's UNet shape (860 M parameters), random weights."""
    return UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=8,
        layers_per_block=2,
    )
