"""Random-weight SD3 and Flux components (MMDiT families) for tests and benchmarks, built offline.

As :mod:`longclip_diffusion.testing` for SD 1.x/SDXL: nothing downloads anything. The CLIP encoders use the real CLIP
tokenizer; T5 gets a small Unigram tokenizer built in code (:func:`tiny_t5_tokenizer`), since diffusers' own fast
tests fetch ``hf-internal-testing/tiny-random-t5`` from the Hub. ``tiny_*`` shapes run in milliseconds on a CPU;
``full_size_*`` shapes match the real models for benchmarks.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from .testing import clip_text_config, full_size_vae, random_text_encoder, tiny_vae
from .tokenizer import load_tokenizer

# Words the tiny T5 vocabulary knows as whole pieces (anything else is spelt letter by letter, or <unk>).
_T5_WORDS = (
    "a an the of and or with in on at by to from for is are was it its this that as be not no very long "
    "photo painting picture image portrait landscape scene view close up detailed style light lighting dark bright "
    "red green blue yellow orange purple pink black white grey gray brown golden silver "
    "cat dog bird fox horse squirrel burger house tree forest river lake sea sky cloud clouds sun moon star mountain "
    "city street road car bus train boat window door room table chair book lamp flower flowers garden field grass "
    "small large big tiny tall short old young round square triangle circle left right top bottom "
    "man woman child person face eyes hair hat coat dress rain snow fog night day dusk dawn morning evening "
    "sitting standing walking running eating holding wearing reading under over behind beside near far "
    "masterpiece blurry lowres quality best high resolution sharp focus soft warm cold wooden stone glass metal"
).split()


def tiny_t5_tokenizer(model_max_length: int = 512) -> T5TokenizerFast:
    """A T5 tokenizer (SentencePiece-style Unigram, ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) over a small vocabulary:
    the words above as whole pieces, and single characters so other words are spelt out."""
    characters = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(f"▁{word}", -4.0) for word in _T5_WORDS]
    vocab += [(f"▁{character}", -8.0) for character in characters]
    vocab += [(character, -9.0) for character in characters]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def t5_config(
    vocab_size: int,
    d_model: int = 32,
    d_ff: int = 37,
    num_layers: int = 2,
    num_heads: int = 4,
    d_kv: int = 8,
) -> T5Config:
    """A T5 v1.1 encoder config (gated GELU, as T5-XXL in SD3 and Flux)."""
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_ff=d_ff,
        d_kv=d_kv,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def random_t5_encoder(config: T5Config, seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_flow_vae(latent_channels: int = 16, shift_factor: float = 0.1159, scaling_factor: float = 0.3611) -> AutoencoderKL:
    """A two-level VAE (scale factor 2) with 16 latent channels and no quant convs, as Flux's and SD3's."""
    return tiny_vae(
        latent_channels=latent_channels,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    )


def tiny_flux_components(long_clip: bool = True, seed: int = 0, clip_width: int = 32) -> dict:
    """Tiny Flux components: transformer (16 latent channels packed 2×2 → 64 inputs), VAE, flow-match scheduler,
    a CLIP-L-like ``text_encoder`` (no projection; 248 positions if ``long_clip``; ``clip_width`` wide, which sets the
    transformer's pooled width) whose pooled output conditions the transformer, and T5 (``text_encoder_2``) with its
    tokenizer. Images of 16×16 pixels → 4×4 packed latents."""
    width_clip, width_t5 = clip_width, 32
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=width_t5,
        pooled_projection_dim=width_clip,
        axes_dims_rope=[4, 4, 8],
    )
    tokenizer_2 = tiny_t5_tokenizer()
    clip_config = clip_text_config(hidden_size=width_clip, projection_dim=width_clip)
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": tiny_flow_vae(),
        "text_encoder": random_text_encoder(clip_config, seed=seed, long=long_clip),
        "tokenizer": load_tokenizer(248 if long_clip else 77),
        "text_encoder_2": random_t5_encoder(t5_config(len(tokenizer_2), d_model=width_t5), seed=seed + 2),
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sd3_components(
    long_clip: bool = True, seed: int = 0, clip_l_width: int = 16, clip_l_projection: int | None = None, t5_width: int = 64
) -> dict:
    """Tiny SD3 components: transformer, VAE (16 latent channels), flow-match scheduler, a CLIP-L-like
    ``text_encoder`` (with projection, ``quick_gelu``; 248 positions if ``long_clip``; ``clip_l_width`` wide, projecting
    to ``clip_l_projection``, default its width), a bigG-like ``text_encoder_2`` (with projection, ``gelu``, 77
    positions as SD3 ships it; ``tokenizer_2`` pads with ``"!"``), and T5 wider than both CLIPs together (16 + 32 < 64
    by default), as in SD3 (768 + 1280 < 4096)."""
    from .testing import sdxl_tokenizer_2

    width_l, width_g, width_t5 = clip_l_width, 32, t5_width
    projection_l = clip_l_projection or width_l
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=width_t5,
        pooled_projection_dim=projection_l + width_g,
    )
    config_l = clip_text_config(hidden_size=width_l, num_attention_heads=2, projection_dim=projection_l)
    config_g = clip_text_config(hidden_size=width_g, projection_dim=width_g, hidden_act="gelu")
    tokenizer_3 = tiny_t5_tokenizer()
    return {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": tiny_flow_vae(shift_factor=0.0609, scaling_factor=1.5305),
        "text_encoder": random_text_encoder(config_l, with_projection=True, seed=seed, long=long_clip),
        "tokenizer": load_tokenizer(248 if long_clip else 77),
        "text_encoder_2": random_text_encoder(config_g, with_projection=True, seed=seed + 1),
        "tokenizer_2": sdxl_tokenizer_2(),
        "text_encoder_3": random_t5_encoder(t5_config(len(tokenizer_3), d_model=width_t5, num_heads=8), seed=seed + 2),
        "tokenizer_3": tokenizer_3,
        "image_encoder": None,
        "feature_extractor": None,
    }


# --------------------------------------------------------------------------------------------------------------------
# Full-size shapes (benchmarks)


def full_size_t5_xxl_config(num_layers: int = 24) -> T5Config:
    """T5 v1.1 XXL's encoder (SD3's ``text_encoder_3``, Flux's ``text_encoder_2``): 4096 wide, 64 heads, 24 layers.
    Fewer ``num_layers`` keep the real width where memory or time is short."""
    return t5_config(vocab_size=32128, d_model=4096, d_ff=10240, num_layers=num_layers, num_heads=64, d_kv=64)


def full_size_flux_transformer(num_layers: int = 19, num_single_layers: int = 38) -> FluxTransformer2DModel:
    """FLUX.1-dev's transformer shape (12 B parameters with the default layer counts), random weights."""
    return FluxTransformer2DModel(
        num_layers=num_layers, num_single_layers=num_single_layers, guidance_embeds=True, axes_dims_rope=(16, 56, 56)
    )


def full_size_flux_vae() -> AutoencoderKL:
    """FLUX.1's VAE shape (16 latent channels, no quant convs, 84 M parameters), random weights."""
    return full_size_vae(
        latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611
    )
