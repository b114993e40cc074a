"""Random-weight components for tests, benchmarks and offline demos (as diffusers' own tests build them).

Nothing here downloads anything: models are built from configs in code and use the real CLIP tokenizer.
``tiny_*`` shapes run in milliseconds on a CPU; ``full_size_*`` shapes match the real models for benchmarks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from . import checkpoints
from .positions import reset_position_ids, stretch_positions, stretch_text_encoder
from .tokenizer import load_tokenizer, token_ids


def clip_text_config(
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 37,
    projection_dim: int = 32,
    max_position_embeddings: int = 77,
    hidden_act: str = "quick_gelu",
) -> CLIPTextConfig:
    """A tiny CLIP text config (the core's :func:`~longclip_diffusion.checkpoints.clip_text_config`, small defaults)."""
    return checkpoints.clip_text_config(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        projection_dim=projection_dim,
        max_position_embeddings=max_position_embeddings,
        hidden_act=hidden_act,
    )


def random_text_encoder(config: CLIPTextConfig, with_projection: bool = False, seed: int = 0, long: bool = False):
    """A random CLIP text encoder; ``long`` stretches it to 248 positions (KPS) like a Long-CLIP encoder."""
    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = model_class(config).eval()
    return stretch_text_encoder(model) if long else model


def random_openai_text_state_dict(
    width: int = 64,
    layers: int = 2,
    positions: int = 77,
    projection: int = 32,
    vocab: int = 1000,
    seed: int = 0,
    long_clip_extras: bool = False,
) -> dict[str, torch.Tensor]:
    """A text tower in the OpenAI/Long-CLIP reference layout (``transformer.resblocks.*``) with random weights; with
    ``long_clip_extras`` also the reference Long-CLIP's ``positional_embedding_res`` and ``logit_scale``."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.05

    state_dict = {"token_embedding.weight": rand(vocab, width), "positional_embedding": rand(positions, width)}
    if long_clip_extras:
        state_dict["positional_embedding_res"] = rand(positions, width)
    state_dict.update({"ln_final.weight": 1 + rand(width), "ln_final.bias": rand(width)})
    state_dict["text_projection"] = rand(width, projection)
    if long_clip_extras:
        state_dict["logit_scale"] = torch.tensor(4.6052)
    for i in range(layers):
        prefix = f"transformer.resblocks.{i}."
        state_dict.update({
            prefix + "attn.in_proj_weight": rand(3 * width, width), prefix + "attn.in_proj_bias": rand(3 * width),
            prefix + "attn.out_proj.weight": rand(width, width), prefix + "attn.out_proj.bias": rand(width),
            prefix + "ln_1.weight": 1 + rand(width), prefix + "ln_1.bias": rand(width),
            prefix + "ln_2.weight": 1 + rand(width), prefix + "ln_2.bias": rand(width),
            prefix + "mlp.c_fc.weight": rand(4 * width, width), prefix + "mlp.c_fc.bias": rand(4 * width),
            prefix + "mlp.c_proj.weight": rand(width, 4 * width), prefix + "mlp.c_proj.bias": rand(width),
        })
    return state_dict


def tiny_vae(**config) -> AutoencoderKL:
    """A two-level VAE (scale factor 2) with 4 latent channels; ``config`` overrides (SD3/Flux pass what differs)."""
    return AutoencoderKL(**{
        "block_out_channels": (4, 8),
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "latent_channels": 4,
        "norm_num_groups": 2,
        "sample_size": 32,
        **config,
    })


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
    vae = tiny_vae()
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


# --------------------------------------------------------------------------------------------------------------------
# SDXL


def sdxl_tokenizer_2(model_max_length: int = 77):
    """SDXL's second tokenizer as shipped: CLIP's vocabulary with ``"!"`` (id 0) as its pad token."""
    from transformers import CLIPTokenizer

    from .tokenizer import bpe_vocabulary

    vocab, merges = bpe_vocabulary()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token="!")


def _tiny_sdxl_unet(cross_attention_dim: int, projection_dim: int, num_time_ids: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
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
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=num_time_ids * 8 + projection_dim,
    )


def tiny_sdxl_components(long_clip: bool = True, refiner: bool = False, seed: int = 0) -> dict:
    """Tiny SDXL components: UNet (``text_time`` conditioning), VAE, Euler scheduler, a CLIP-L-like encoder
    (``quick_gelu``, 248 positions if ``long_clip``) and a bigG-like encoder with projection (``gelu``, 77 positions,
    as the SDXL base ships it). ``tokenizer_2`` pads with ``"!"`` like SDXL's.

    ``refiner``: the SDXL refiner's layout instead (no ``text_encoder``/``tokenizer``, bigG only, aesthetic score).
    """
    from diffusers import EulerDiscreteScheduler

    width_l, width_g = 16, 32
    torch.manual_seed(seed)
    unet = _tiny_sdxl_unet(
        cross_attention_dim=width_g if refiner else width_l + width_g,
        projection_dim=width_g,
        num_time_ids=5 if refiner else 6,
    )
    vae = tiny_vae()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    config_g = clip_text_config(hidden_size=width_g, projection_dim=width_g, intermediate_size=37, hidden_act="gelu")
    text_encoder_2 = random_text_encoder(config_g, with_projection=True, seed=seed + 1)
    components = {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": sdxl_tokenizer_2(),
        "image_encoder": None,
        "feature_extractor": None,
    }
    if refiner:
        components.update(text_encoder=None, tokenizer=None, requires_aesthetics_score=True)
        return components
    config_l = clip_text_config(hidden_size=width_l, num_attention_heads=2, projection_dim=width_l)
    components.update(
        text_encoder=random_text_encoder(config_l, seed=seed, long=long_clip),
        tokenizer=load_tokenizer(248 if long_clip else 77),
    )
    return components


def full_size_bigg_config(max_position_embeddings: int = 77) -> CLIPTextConfig:
    """OpenCLIP ViT-bigG/14's text tower (SDXL's ``text_encoder_2``): 1280 wide, 32 layers, 20 heads, GELU."""
    return clip_text_config(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=20,
        intermediate_size=5120,
        projection_dim=1280,
        max_position_embeddings=max_position_embeddings,
        hidden_act="gelu",
    )


def full_size_sdxl_unet() -> UNet2DConditionModel:
    """SDXL base's UNet shape (2.6 B parameters, ≈ 10 GB in float32), random weights."""
    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=2048,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        layers_per_block=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def full_size_vae(**config) -> AutoencoderKL:
    """The SD/SDXL/SD3/Flux VAE shape (84 M parameters), random weights; ``config`` sets what differs (SDXL's is the
    default: 4 latent channels)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        sample_size=1024,
        **{"latent_channels": 4, "scaling_factor": 0.13025, **config},
    )


# --------------------------------------------------------------------------------------------------------------------
# Full-size random models for the benchmarks: built on the meta device, filled fast, position tables shared or stretched


def random_init(model: nn.Module, device: str = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Fast random fill of a model built on the meta device (weights N(0, 0.02), norms 1, biases 0)."""
    if dtype is not None:
        model.to(dtype=dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif parameter.ndim == 1:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02)
    return reset_position_ids(model).eval()  # non-persistent buffers are lost by to_empty


def with_position_table(model: nn.Module, num_positions: int) -> nn.Module:
    """The same CLIP text encoder weights (shared, not copied) with a ``num_positions``-row position table: the
    model's own when it has that many rows, else its table KPS-stretched."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.max_position_embeddings = num_positions
    with torch.device("meta"):
        clone = type(model)(config)
    state = dict(model.state_dict())
    key = next(k for k in state if k.endswith("position_embedding.weight") and "vision" not in k)
    if state[key].shape[0] != num_positions:
        state[key] = stretch_positions(state[key])
    clone.load_state_dict(state, assign=True)
    return reset_position_ids(clone).eval()


BENCHMARK_PROMPT = (
    "A quiet harbour town at dawn seen from a hillside: fishing boats with peeling blue and red paint rest on still "
    "water, gulls circle above the breakwater, a lighthouse with a white and green striped tower stands at the end "
    "of the pier, terraced houses in ochre, pink and pale yellow climb the slope with laundry lines strung between "
    "balconies, a baker in a flour-dusted apron carries a tray of bread across a cobbled square, an old dog sleeps "
    "beside a fountain with a bronze fish, mist lifts from the bay and the first sunlight catches the church bell "
    "tower, distant mountains fade into blue haze, long shadows, soft pastel colours, detailed, 35 mm film photograph "
    "with gentle grain, shallow depth of field, a ferry leaving the harbour trailing white foam, stacked lobster pots "
    "and coiled ropes on the quay, a cat watching from a window box full of geraniums, chalkboard menus outside a "
    "small cafe, bicycles leaning against a stone wall, wet cobbles reflecting warm light, a fisherman mending a "
    "green net on an upturned crate, a red postbox at the corner of a narrow lane, ivy climbing a crumbling harbour "
    "wall, tide pools glinting between dark rocks, a child in a yellow raincoat feeding the gulls, smoke curling from "
    "chimneys, a weathervane shaped like a ship"
)


def benchmark_prompt(max_tokens: int = 246) -> str:
    """The benchmarks' long prompt, cut at a word to at most ``max_tokens`` tokens (246: all that Long-CLIP reads)."""
    prompt = BENCHMARK_PROMPT
    while len(token_ids([prompt])[0]) > max_tokens:
        prompt = prompt.rsplit(" ", 1)[0].rstrip(",")
    return prompt


LORA_RANK = 4


def trained_lora(model: nn.Module, targets: list[str], seed: int) -> dict[str, torch.Tensor]:
    """LoRA layers (rank :data:`LORA_RANK`, alpha = rank) with non-zero A and B, as after training, on a copy of
    ``model``, in diffusers' saved format (what ``save_lora_weights`` takes). Needs peft."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=targets, init_lora_weights=False)
    state_dict = get_peft_model_state_dict(inject_adapter_in_model(config, copy.deepcopy(model)))
    if not state_dict:
        raise ValueError(f"no LoRA layers made for {targets}")
    return convert_state_dict_to_diffusers(state_dict)


def merge_lora_by_hand(model: nn.Module, lora: dict[str, torch.Tensor], scale: float = 1.0) -> int:
    """Add ``scale * up @ down`` (alpha = rank) to each linear layer ``lora`` targets, independently of any loader;
    returns how many were changed."""
    downs = {key.removesuffix(".down.weight").rsplit(".", 1)[0]: value
             for key, value in lora.items() if key.endswith(".down.weight")}
    with torch.no_grad():
        for name, down in downs.items():
            up = next(value for key, value in lora.items() if key.startswith(name + ".") and key.endswith(".up.weight"))
            if not hasattr(model, "text_model"):  # transformers 5 flattens CLIPTextModel
                name = name.removeprefix("text_model.")
            model.get_submodule(name).weight += scale * up @ down
    return len(downs)
