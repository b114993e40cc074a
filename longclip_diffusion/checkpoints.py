"""Long-CLIP checkpoints: detect, read and write every format users have.

Formats read (detected from key names, never from the file name):

* ``openai`` — the released Long-CLIP files (``longclip-L.pt``, ``longclip-B.pt``) and OpenAI/OpenCLIP state dicts:
  ``transformer.resblocks.*``, ``token_embedding.weight``, ``positional_embedding`` (+ ``positional_embedding_res``),
  ``ln_final.*``, ``text_projection``, optionally ``visual.*``. As a torch pickle or safetensors. Such a file names
  no activation: see :func:`openai_layout_activation` (OpenAI's CLIP uses QuickGELU, OpenCLIP's H/g/bigG GELU).
* ``transformers`` — Hugging Face CLIP layouts (``CLIPModel``, ``CLIPTextModel``, ``CLIPTextModelWithProjection``):
  a folder or Hub id with ``config.json``, or a bare state dict.
* ``comfy`` — ComfyUI's single-file text encoder: transformers key names (``text_model.*``,
  ``text_projection.weight``) in one safetensors file, with or without a prefix such as ``clip_l.``.

The effective position table of a Long-CLIP file is what the reference model adds at run time:
rows below ``keep`` (20) from ``positional_embedding``, rows from ``keep`` on from ``positional_embedding_res``.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    PreTrainedModel,
)

from .files import atomic_file, atomic_folder, check_destination
from .positions import reset_position_ids
from .sources import looks_like_path
from .tokenizer import END_OF_TEXT, START_OF_TEXT, VOCAB_SIZE, bpe_vocabulary, load_tokenizer

Format = Literal["openai", "transformers", "comfy"]
TextEncoder = CLIPTextModel | CLIPTextModelWithProjection

KEEP = 20
CONFIG_METADATA_KEY = "longclip_diffusion.text_config"  # exact config in single files we write (ComfyUI ignores it)
_EXPECTED = (
    "expected a CLIP text encoder: an OpenAI/Long-CLIP state dict (`transformer.resblocks.*`, "
    "`token_embedding.weight`, `positional_embedding`), a transformers CLIP folder (`config.json`) "
    "or a ComfyUI single file (`text_model.*` keys)"
)
_TEXT_TABLE = "embeddings.position_embedding.weight"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
_PRETRAINED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_CLIP_MODEL_TYPES = ("clip_text_model", "clip")
_FILE_SIGNATURES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"\x1f\x8b": "a gzip archive"}
ACTIVATIONS = ("auto", "gelu", "quick_gelu")
OPENAI_MAX_TEXT_LAYERS = 12  # no OpenAI CLIP text tower is deeper; OpenCLIP H/g have 24, bigG 32
# OpenCLIP vision towers whose heads are not 64 wide (ViT-H/14: 80, ViT-g/14: 88, ViT-bigG/14: 104; 16 heads each)
OPENCLIP_VISION_HEADS = {1280: 16, 1408: 16, 1664: 16}


class CheckpointError(ValueError):
    """A file that cannot be read as a CLIP text encoder; the message names the file and what to do."""


# --------------------------------------------------------------------------------------------------------------------
# Shapes and configs


def count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of blocks ``prefix0.…``, ``prefix1.…`` in a state dict; a gap in the numbering is an error."""
    indices = {key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)}
    numbers = sorted(int(index) for index in indices if index.isdigit())
    missing = sorted(set(range(len(numbers))) - set(numbers)) if numbers else []
    if missing:
        raise CheckpointError(
            f"blocks `{prefix}N` are numbered {numbers[:8]}{'…' if len(numbers) > 8 else ''}: block(s) {missing[:8]} "
            "missing; the file is incomplete — re-download or re-export it."
        )
    return len(numbers)


def attention_heads(width: int) -> int:
    """OpenAI CLIP's rule: ``width // 64`` heads of 64 (one head below 64); refuses a width they cannot split."""
    heads = max(1, width // 64)
    if width % heads:
        raise CheckpointError(
            f"a text tower {width} wide cannot be split into {heads} attention heads (CLIP uses width // 64); "
            "expected a width such as 512, 768, 1024 or 1280."
        )
    return heads


def openai_layout_activation(text_layers: int, hidden_act: str = "auto") -> str:
    """The activation of an OpenAI-layout file, which does not record it: ``hidden_act`` when given, else ``"gelu"``
    for a text tower deeper than OpenAI's (OpenCLIP ViT-H/g/bigG, trained with GELU) and ``"quick_gelu"`` otherwise.

    A QuickGELU OpenCLIP model of that depth (e.g. DFN5B/MetaCLIP ``-quickgelu``) or a GELU one of 12 layers (LAION
    ViT-B/L) needs ``hidden_act`` given explicitly.
    """
    if hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act must be one of {', '.join(ACTIVATIONS)}, got {hidden_act!r}")
    if hidden_act != "auto":
        return hidden_act
    return "gelu" if text_layers > OPENAI_MAX_TEXT_LAYERS else "quick_gelu"


def clip_text_config(
    *,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    max_position_embeddings: int,
    num_attention_heads: int | None = None,
    projection_dim: int | None = None,
    vocab_size: int = VOCAB_SIZE,
    hidden_act: str = "quick_gelu",
) -> CLIPTextConfig:
    """A CLIP text config with CLIP's token ids (start/end of text, pad 0); heads default to :func:`attention_heads`."""
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        projection_dim=projection_dim or hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads or attention_heads(hidden_size),
        max_position_embeddings=max_position_embeddings,
        hidden_act=hidden_act,
        bos_token_id=START_OF_TEXT,
        eos_token_id=END_OF_TEXT,
        pad_token_id=0,
    )


def text_encoder_width(text_encoder: nn.Module | dict[str, torch.Tensor]) -> int:
    """Hidden size of a CLIP text encoder: a transformers model or a text state dict in any layout and prefix."""
    if isinstance(text_encoder, nn.Module):
        return text_encoder.get_input_embeddings().embedding_dim
    for key, value in text_encoder.items():
        if key.endswith(("token_embedding.weight", _TEXT_TABLE)) and "vision" not in key and "visual" not in key:
            return value.shape[-1]
    raise CheckpointError(f"found keys like {sorted(text_encoder)[:4]}; {_EXPECTED}.")


def check_text_encoder_width(
    text_encoder: nn.Module | dict[str, torch.Tensor], expected_width: int, *, where: str
) -> None:
    """Refuse a text encoder whose hidden size is not what the UNet reads, before it goes into a pipeline.

    ``expected_width``: the UNet's ``cross_attention_dim`` (SD 1.x: 768), or for SDXL the part of it this encoder
    fills (``cross_attention_dim`` − the other encoder's width: 2048 − 1280 = 768 for ``text_encoder``).
    ``where`` names the slot and the model, e.g. ``"text_encoder of the SD 1.x pipeline"`` or a file name.
    """
    width = text_encoder_width(text_encoder)
    if width != expected_width:
        raise CheckpointError(
            f"{where}: the text encoder is {width} wide but the model reads {expected_width} (the UNet's "
            "cross_attention_dim, or this encoder's share of it); use a Long-CLIP of the base's own CLIP size "
            "(Long-CLIP-L: 768 for SD 1.x and SDXL's text_encoder; a 1280-wide bigG for SDXL's text_encoder_2)."
        )


# --------------------------------------------------------------------------------------------------------------------
# Reading


def read_state_dict(path: str | os.PathLike, include: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (read lazily) or a torch pickle (``weights_only=True``, memory-mapped).

    ``include``: only keys starting with one of these prefixes are read (e.g. skip a vision tower). Pickled code is
    never run: such a file is refused with one line.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected a checkpoint file (.safetensors, .pt, .bin).")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: is empty (0 bytes); the download or export did not finish — redo it.")
    not_a_checkpoint = _describe_foreign_content(path)
    if not_a_checkpoint:
        raise CheckpointError(f"{path}: {not_a_checkpoint}, not a checkpoint; {_EXPECTED}.")

    def wanted(key: str) -> bool:
        return include is None or key.startswith(include)

    if _is_safetensors(path):
        try:
            with safe_open(path, framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys() if wanted(key)}
        except (SafetensorError, OSError, RuntimeError) as error:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({_first_line(error)}); is it truncated? Re-download it."
            ) from None

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(_unpickling_message(path, error)) from None
    except RuntimeError as error:  # not a zip checkpoint: an old-style pickle cannot be memory-mapped
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as retry_error:
            raise CheckpointError(_unpickling_message(path, retry_error)) from None
        except Exception:
            raise CheckpointError(
                f"{path}: cannot be read as a torch checkpoint ({_first_line(error)}); it is truncated or not a "
                "checkpoint at all."
            ) from None
    except Exception as error:  # EOFError, KeyError from a foreign pickle, …
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({type(error).__name__}: {_first_line(error)}); it is "
            "truncated or not a checkpoint at all."
        ) from None

    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors; {_EXPECTED}.")
    if not loaded:
        raise CheckpointError(f"{path}: holds no tensors (an empty state dict); {_EXPECTED}.")
    return {key: value for key, value in loaded.items() if wanted(key)}


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _unpickling_message(path: Path, error: pickle.UnpicklingError) -> str:
    """One line for a pickle that ``weights_only=True`` refused (it names code or objects) or could not parse."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found is None:
        return f"{path}: cannot be read as a torch checkpoint (not a valid pickle); it is truncated or not a checkpoint at all."
    return (
        f"refused to unpickle code in {path} (it calls {found.group(1)}); use safetensors — only plain tensors are "
        "loaded from pickles (weights_only=True)."
    )


def _describe_foreign_content(path: Path) -> str | None:
    """What a file is when it plainly is no checkpoint (an image, text); ``None`` when it may be one."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    for signature, kind in _FILE_SIGNATURES.items():
        if head.startswith(signature):
            return f"is {kind}"
    if head[8:9] == b"{" or head.startswith(b"PK\x03\x04"):  # safetensors header, torch zip
        return None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at byte 512 is not an error
    except UnicodeDecodeError:
        return None
    printable = all(character.isprintable() or character in "\t\n\r\f" for character in text)
    return "is a text file" if printable else None


def _safetensors_metadata(path: Path) -> dict[str, str]:
    if not _is_safetensors(path):
        return {}
    with safe_open(path, framework="pt") as handle:
        return handle.metadata() or {}


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


def detect_format(state_dict: dict[str, torch.Tensor]) -> Format:
    """Which layout a state dict uses: ``openai``, ``transformers`` (a saved transformers model) or ``comfy``."""
    keys = _strip_module_prefix(state_dict).keys()
    if "positional_embedding" in keys or any(key.startswith("transformer.resblocks.") for key in keys):
        return "openai"
    table_keys = [key for key in keys if key.endswith(_TEXT_TABLE) and "vision" not in key]
    if len(table_keys) == 1:
        prefix = table_keys[0][: -len(_TEXT_TABLE)]
        return "transformers" if prefix in ("", "text_model.") else "comfy"
    raise CheckpointError(f"found keys like {sorted(keys)[:4]}; {_EXPECTED}.")


def effective_position_table(state_dict: dict[str, torch.Tensor], keep: int = KEEP) -> torch.Tensor:
    """The table the reference Long-CLIP adds at run time: rows < keep from ``positional_embedding``, others from ``_res``."""
    table = state_dict["positional_embedding"]
    residual = state_dict.get("positional_embedding_res")
    if residual is None:
        return table
    return torch.cat([table[:keep], residual[keep:]])


def _openai_text_config(state_dict: dict[str, torch.Tensor], hidden_act: str = "auto") -> CLIPTextConfig:
    """Config of an OpenAI-layout text tower, after checking every tensor it needs is there with a consistent shape."""
    required = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias")
    layers = count_layers(state_dict, "transformer.resblocks.")
    missing = [key for key in required if key not in state_dict]
    if not layers:
        missing.append("transformer.resblocks.0.*")
    elif "transformer.resblocks.0.mlp.c_fc.weight" not in state_dict:
        missing.append("transformer.resblocks.0.mlp.c_fc.weight")
    if missing:
        raise CheckpointError(
            f"an OpenAI/Long-CLIP text tower without {_names(missing)} ({len(state_dict)} tensors found); the file is "
            "incomplete — re-download or re-export it."
        )
    vocab_size, width = _shape(state_dict, "token_embedding.weight", 2)
    intermediate = _shape(state_dict, "transformer.resblocks.0.mlp.c_fc.weight", 2)[0]
    num_positions = _shape(state_dict, "positional_embedding", 2)[0]
    expected = {
        "positional_embedding": (num_positions, width),
        "positional_embedding_res": (num_positions, width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
    }
    for layer in range(layers):
        block = f"transformer.resblocks.{layer}."
        expected.update({block + name: shape for name, shape in _openai_block_shapes(width, intermediate).items()})
    _check_shapes(state_dict, expected, f"a {width}-wide, {layers}-layer text tower (MLP {intermediate})")
    projection = state_dict.get("text_projection")
    if projection is not None and (projection.ndim != 2 or projection.shape[0] != width):
        raise CheckpointError(f"`text_projection` is {list(projection.shape)}, expected [{width}, embed_dim].")
    return clip_text_config(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=intermediate,
        projection_dim=projection.shape[1] if projection is not None else width,
        num_hidden_layers=layers,
        max_position_embeddings=num_positions,
        hidden_act=openai_layout_activation(layers, hidden_act),
    )


def _openai_block_shapes(width: int, intermediate: int) -> dict[str, tuple[int, ...]]:
    return {
        "attn.in_proj_weight": (3 * width, width),
        "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width),
        "attn.out_proj.bias": (width,),
        "ln_1.weight": (width,),
        "ln_1.bias": (width,),
        "ln_2.weight": (width,),
        "ln_2.bias": (width,),
        "mlp.c_fc.weight": (intermediate, width),
        "mlp.c_fc.bias": (intermediate,),
        "mlp.c_proj.weight": (width, intermediate),
        "mlp.c_proj.bias": (width,),
    }


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"`{key}`" for key in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _shape(state_dict: dict[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"`{key}` is {list(shape)}; expected {ndim} dimensions.")
    return shape


def _check_shapes(state_dict: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], model: str) -> None:
    """Refuse missing tensors and shapes that disagree with ``model``: what was found against what was expected."""
    missing = [key for key in expected if key not in state_dict and key != "positional_embedding_res"]
    if missing:
        raise CheckpointError(f"missing {_names(missing)} for {model}; the file is incomplete — re-download or re-export it.")
    wrong = [
        f"`{key}` is {list(state_dict[key].shape)}, expected {list(shape)}"
        for key, shape in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(shape)
    ]
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise CheckpointError(
            f"inconsistent shapes for {model}: {'; '.join(wrong[:3])}{more}; the file is damaged or mixes two models."
        )


def _openai_vision_config(state_dict: dict[str, torch.Tensor], hidden_act: str) -> CLIPVisionConfig:
    required = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "visual.class_embedding")
    missing = [key for key in required if key not in state_dict]
    if "visual.transformer.resblocks.0.mlp.c_fc.weight" not in state_dict:
        missing.append("visual.transformer.resblocks.0.mlp.c_fc.weight")
    if missing:
        raise CheckpointError(f"a vision tower without {_names(missing)}; the file is incomplete.")
    conv = _shape(state_dict, "visual.conv1.weight", 4)
    width, patch = conv[0], conv[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        projection_dim=_shape(state_dict, "visual.proj", 2)[1],
        num_hidden_layers=count_layers(state_dict, "visual.transformer.resblocks."),
        num_attention_heads=OPENCLIP_VISION_HEADS.get(width) or attention_heads(width),
        image_size=patch * grid,
        patch_size=patch,
        hidden_act=hidden_act,
    )


# OpenAI block names → transformers block names (q, k, v are split from in_proj separately).
_BLOCK_NAMES = {
    "attn.out_proj": "self_attn.out_proj",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def _convert_blocks(state_dict: dict[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    converted = {}
    pattern = re.compile(re.escape(source) + r"(\d+)\.(attn\.in_proj|.+)[._](weight|bias)$")
    for key, value in state_dict.items():
        match = pattern.match(key)
        if not match:
            continue
        layer, name, kind = match.groups()
        prefix = f"{target}{layer}."
        if name == "attn.in_proj":
            for projection, chunk in zip("qkv", value.chunk(3)):
                converted[f"{prefix}self_attn.{projection}_proj.{kind}"] = chunk
        else:
            converted[f"{prefix}{_BLOCK_NAMES[name]}.{kind}"] = value
    return converted


def openai_to_transformers(
    state_dict: dict[str, torch.Tensor], keep: int = KEEP, hidden_act: str = "auto"
) -> tuple[CLIPConfig | CLIPTextConfig, dict[str, torch.Tensor]]:
    """Convert an OpenAI/OpenCLIP/Long-CLIP state dict to transformers names (``CLIPModel`` if it has a vision tower).

    ``hidden_act``: see :func:`openai_layout_activation`; both towers get the same one.
    """
    state_dict = _strip_module_prefix(state_dict)
    text_config = _openai_text_config(state_dict, hidden_act)
    converted = _convert_blocks(state_dict, "transformer.resblocks.", "text_model.encoder.layers.")
    converted.update(
        {
            "text_model.embeddings.token_embedding.weight": state_dict["token_embedding.weight"],
            "text_model.embeddings.position_embedding.weight": effective_position_table(state_dict, keep),
            "text_model.final_layer_norm.weight": state_dict["ln_final.weight"],
            "text_model.final_layer_norm.bias": state_dict["ln_final.bias"],
        }
    )
    if "text_projection" in state_dict:
        converted["text_projection.weight"] = state_dict["text_projection"].t().contiguous()
    if "visual.proj" not in state_dict:
        return text_config, converted

    vision = _convert_blocks(state_dict, "visual.transformer.resblocks.", "vision_model.encoder.layers.")
    vision.update(
        {
            "vision_model.embeddings.class_embedding": state_dict["visual.class_embedding"],
            "vision_model.embeddings.patch_embedding.weight": state_dict["visual.conv1.weight"],
            "vision_model.embeddings.position_embedding.weight": state_dict["visual.positional_embedding"],
            "vision_model.pre_layrnorm.weight": state_dict["visual.ln_pre.weight"],
            "vision_model.pre_layrnorm.bias": state_dict["visual.ln_pre.bias"],
            "vision_model.post_layernorm.weight": state_dict["visual.ln_post.weight"],
            "vision_model.post_layernorm.bias": state_dict["visual.ln_post.bias"],
            "visual_projection.weight": state_dict["visual.proj"].t().contiguous(),
        }
    )
    converted.update(vision)
    if "logit_scale" in state_dict:
        converted["logit_scale"] = state_dict["logit_scale"]
    config = CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=_openai_vision_config(state_dict, text_config.hidden_act).to_dict(),
        projection_dim=text_config.projection_dim,
    )
    return config, converted


def _transformers_text_config(state_dict: dict[str, torch.Tensor]) -> CLIPTextConfig:
    """Config of a bare transformers-layout text state dict (``text_model.*``); heads = width / 64 as in CLIP."""
    required = (
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.encoder.layers.0.mlp.fc1.weight",
    )
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise CheckpointError(
            f"a transformers CLIP text model without {_names(missing)} ({len(state_dict)} tensors found); the file is "
            "incomplete — re-download or re-export it."
        )
    vocab_size, width = _shape(state_dict, "text_model.embeddings.token_embedding.weight", 2)
    projection = state_dict.get("text_projection.weight")
    layers = count_layers(state_dict, "text_model.encoder.layers.")
    return clip_text_config(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=_shape(state_dict, "text_model.encoder.layers.0.mlp.fc1.weight", 2)[0],
        projection_dim=projection.shape[0] if projection is not None else width,
        num_hidden_layers=layers,
        max_position_embeddings=_shape(state_dict, "text_model.embeddings.position_embedding.weight", 2)[0],
        hidden_act=openai_layout_activation(layers),
    )


def _to_text_model_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers/ComfyUI layouts → ``text_model.*`` + ``text_projection.weight`` (prefixes removed)."""
    tables = [key for key in state_dict if key.endswith(_TEXT_TABLE) and "vision" not in key]
    if len(tables) != 1:
        raise CheckpointError(f"found {len(tables)} text position tables (`…{_TEXT_TABLE}`); {_EXPECTED}.")
    prefix = tables[0][: -len(_TEXT_TABLE)]
    outer = prefix[: -len("text_model.")] if prefix.endswith("text_model.") else prefix
    converted = {}
    for key, value in state_dict.items():
        if key == outer + "text_projection.weight":
            converted["text_projection.weight"] = value
        elif key.startswith(prefix) and not key.startswith(("vision_model.", "visual_projection.")):
            converted["text_model." + key[len(prefix) :]] = value
    return converted


def _build(model_class: type[PreTrainedModel], config, state_dict: dict[str, torch.Tensor]) -> PreTrainedModel:
    """Instantiate without random init (meta device) and assign the given tensors, after checking every shape."""
    text_config = getattr(config, "text_config", config)
    try:
        with torch.device("meta"):
            model = model_class(config)
    except (ValueError, ZeroDivisionError) as error:
        raise CheckpointError(
            f"its config cannot build a {model_class.__name__} ({_first_line(error)}): hidden_size "
            f"{text_config.hidden_size}, {text_config.num_attention_heads} heads."
        ) from None
    expected = model.state_dict()
    if "text_model.embeddings.token_embedding.weight" not in expected:  # transformers >= 5 CLIPTextModel: no wrapper
        state_dict = {key.removeprefix("text_model."): value for key, value in state_dict.items()}
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise CheckpointError(f"missing {_names(missing)} for a {model_class.__name__}; {_EXPECTED}.")
    described = (
        f"a {model_class.__name__} {text_config.hidden_size} wide with {text_config.num_hidden_layers} layers, "
        f"{text_config.max_position_embeddings} positions"
    )
    _check_shapes(state_dict, {key: tuple(value.shape) for key, value in expected.items()}, described)
    model.load_state_dict({key: state_dict[key] for key in expected}, strict=True, assign=True)
    return reset_position_ids(model).eval()


@contextmanager
def _naming(origin: str) -> Iterator[None]:
    """Put ``origin`` (the file or folder) in front of a ``CheckpointError`` that does not name it yet."""
    try:
        yield
    except CheckpointError as error:
        if origin in str(error):
            raise
        raise CheckpointError(f"{origin}: {error}") from None


def _text_model_class(with_projection: bool) -> type[PreTrainedModel]:
    return CLIPTextModelWithProjection if with_projection else CLIPTextModel


def load_text_encoder(
    source: str | os.PathLike | nn.Module,
    *,
    with_projection: bool = False,
    torch_dtype: torch.dtype | None = None,
    keep: int = KEEP,
    subfolder: str | None = None,
) -> TextEncoder:
    """Load a (Long-)CLIP text encoder from any supported file, folder, Hub id or model.

    ``with_projection`` gives a ``CLIPTextModelWithProjection`` (pooled, projected end-of-text feature, as SDXL's
    second encoder and retrieval need); otherwise a ``CLIPTextModel`` (as SD 1.x's ``text_encoder``).
    Structure is checked before a model is built: a missing or inconsistent tensor raises :class:`CheckpointError`
    naming the file, what was found and what was expected.
    """
    model_class = _text_model_class(with_projection)
    if isinstance(source, nn.Module):
        model = source if isinstance(source, model_class) else _rebuild(source, model_class)
    elif Path(source).expanduser().is_file():
        model = _load_text_file(Path(source).expanduser(), model_class, keep)
    else:
        model = _load_pretrained(source, model_class, subfolder, keep)
    return model.to(torch_dtype) if torch_dtype is not None else model


def _rebuild(model: nn.Module, model_class: type[PreTrainedModel]) -> PreTrainedModel:
    config = getattr(model.config, "text_config", model.config)
    with _naming(type(model).__name__):
        return _build(model_class, config, _to_text_model_keys(model.state_dict()))


def _load_text_file(path: Path, model_class: type[PreTrainedModel], keep: int) -> PreTrainedModel:
    state_dict = _strip_module_prefix(read_state_dict(path))
    with _naming(str(path)):
        if detect_format(state_dict) == "openai":
            text_only = {key: value for key, value in state_dict.items() if not key.startswith("visual.")}
            config, converted = openai_to_transformers(text_only, keep)
        else:
            converted = _to_text_model_keys(state_dict)
            config = _saved_text_config(path) or _transformers_text_config(converted)
        if model_class is CLIPTextModelWithProjection and "text_projection.weight" not in converted:
            raise CheckpointError("has no text projection, which a CLIPTextModelWithProjection needs.")
        return _build(model_class, config, converted)


def _saved_text_config(path: Path) -> CLIPTextConfig | None:
    """The exact config we store in single files we write (``None`` for files written by others)."""
    saved = _safetensors_metadata(path).get(CONFIG_METADATA_KEY)
    if saved is None:
        return None
    try:
        values = json.loads(saved)
    except ValueError as error:
        raise CheckpointError(f"its `{CONFIG_METADATA_KEY}` metadata is not a CLIP text config ({_first_line(error)}).") from None
    return _config_from_dict(CLIPTextConfig, values, f"its `{CONFIG_METADATA_KEY}` metadata")


def _config_from_dict(config_class: type, values: object, where: str):
    """A transformers config from user data; any refusal (types, heads that do not divide the width) in one line."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{where} is not a CLIP config (a JSON object was expected).")
    try:
        return config_class.from_dict(values)
    except Exception as error:  # ValueError, TypeError, huggingface_hub's validation errors (which vary by version)
        raise CheckpointError(f"{where} is not a valid {config_class.__name__} ({_first_line(error)}).") from None


def _load_folder(folder: Path, model_class: type[PreTrainedModel]) -> PreTrainedModel:
    """A transformers CLIP folder (``config.json`` + weights), read with the same checks as a single file.

    Only the tensors the model needs are kept (a projection or vision tower beside them is ignored, silently); pickled
    ``.bin`` weights go through ``weights_only=True``.
    """
    config_path = folder / "config.json"
    try:
        config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config_path}: not a readable JSON config ({_first_line(error)}).") from None
    model_type = config_dict.get("model_type") if isinstance(config_dict, dict) else None
    allowed = ("clip",) if model_class is CLIPModel else _CLIP_MODEL_TYPES
    if model_type not in allowed:
        found = model_type or (config_dict.get("_class_name") if isinstance(config_dict, dict) else None)
        raise CheckpointError(
            f"{config_path}: describes {found or 'an unknown model'}, not a {model_class.__name__} "
            f"(model_type {' or '.join(allowed)}); {_EXPECTED}."
        )
    with _naming(str(folder)):
        if model_class is CLIPModel:
            config = _config_from_dict(CLIPConfig, config_dict, str(config_path))
        else:
            text_values = config_dict.get("text_config") if model_type == "clip" else config_dict
            config = _config_from_dict(CLIPTextConfig, text_values, str(config_path))
        state_dict = {}
        for weights in _folder_weight_files(folder):
            state_dict.update(read_state_dict(weights))
        if model_class is not CLIPModel:
            state_dict = _to_text_model_keys(state_dict)
        return _build(model_class, config, state_dict)


def _folder_weight_files(folder: Path) -> list[Path]:
    """The weights of a ``save_pretrained`` folder: one file, or the shards its index names (safetensors first)."""
    for name in _PRETRAINED_WEIGHTS:
        candidate = folder / name
        if not candidate.is_file():
            continue
        if not name.endswith(".index.json"):
            return [candidate]
        try:
            shards = sorted(set(json.loads(candidate.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{candidate}: not a readable weights index ({_first_line(error)}).") from None
        return [folder / shard for shard in shards]
    raise CheckpointError(
        f"{folder}: has config.json but no weights (model.safetensors or pytorch_model.bin); the download or export "
        "is incomplete."
    )


def _load_pretrained(
    source: str | os.PathLike, model_class: type[PreTrainedModel], subfolder: str | None, keep: int = KEEP
) -> PreTrainedModel:
    folder = Path(source).expanduser()
    if not folder.exists() and (isinstance(source, os.PathLike) or looks_like_path(str(source))):
        raise CheckpointError(f"{source}: no such file or folder.")
    if folder.is_dir():
        if subfolder is not None:
            folder = folder / subfolder
            if not folder.is_dir():
                raise CheckpointError(f"{folder}: no such folder (subfolder {subfolder!r}).")
        elif not (folder / "config.json").exists():
            # a converted folder: text_encoder/ (CLIP-L, first, as in a whole pipeline folder), else text_encoder_2/ (bigG)
            encoder = next((name for name in ("text_encoder", "text_encoder_2") if (folder / name / "config.json").exists()), None)
            folder = folder / encoder if encoder else folder
        if not (folder / "config.json").is_file():
            weights = sorted(path.name for path in folder.glob("*") if path.suffix in _WEIGHT_SUFFIXES)
            hint = f" (it holds {', '.join(weights[:3])}: pass that file instead)" if weights else ""
            raise CheckpointError(f"{folder}: a folder without config.json (nor text_encoder/ or text_encoder_2/config.json){hint}; {_EXPECTED}.")
        return _load_folder(folder, model_class)
    try:
        return model_class.from_pretrained(str(source), subfolder=subfolder or "").eval()
    except OSError as error:
        checkpoint = _hub_single_checkpoint(str(source)) if subfolder is None else None
        if checkpoint is not None:
            return _load_text_file(checkpoint, model_class, keep) if model_class is not CLIPModel else load_clip_model(checkpoint)
        raise CheckpointError(
            f"{source}: no such file or folder here, and not found as a Hub id ({_first_line(error)}). Check the path; "
            "a Hub id needs network access (or a filled cache with HF_HUB_OFFLINE=1)."
        ) from None


def _hub_single_checkpoint(repo_id: str) -> Path | None:
    """The one weights file of a Hub repo without config.json (e.g. BeichenZhang/LongCLIP-L's longclip-L.pt)."""
    from huggingface_hub import hf_hub_download, list_repo_files
    from huggingface_hub.errors import HFValidationError

    try:
        files = [name for name in list_repo_files(repo_id) if name.endswith(_WEIGHT_SUFFIXES)]
    except (OSError, HFValidationError, ValueError):
        return None
    if len(files) != 1:
        return None
    return Path(hf_hub_download(repo_id, files[0]))


def load_clip_model(source: str | os.PathLike | CLIPModel, keep: int = KEEP, hidden_act: str = "auto") -> CLIPModel:
    """Load both towers as a transformers ``CLIPModel``: an OpenAI/OpenCLIP file with ``visual.*`` (e.g. OpenCLIP's
    ``open_clip_pytorch_model.bin`` of ViT-bigG/14) or a CLIPModel folder (e.g. LAION's transformers bigG).

    ``hidden_act`` applies to OpenAI-layout files only (a folder's config names its activation); see
    :func:`openai_layout_activation`.
    """
    openai_layout_activation(0, hidden_act)  # refuse a bad value before reading anything
    if isinstance(source, CLIPModel):
        return source
    path = Path(source)
    if not path.is_file():
        return _load_pretrained(source, CLIPModel, None)
    state_dict = _strip_module_prefix(read_state_dict(path))
    with _naming(str(path)):
        if detect_format(state_dict) != "openai":
            raise CheckpointError("a single-file text encoder has no vision tower; a CLIPModel needs both.")
        if "visual.proj" not in state_dict:
            raise CheckpointError("has no vision tower (`visual.*`); a CLIPModel needs both towers.")
        config, converted = openai_to_transformers(state_dict, keep, hidden_act)
        return _build(CLIPModel, config, converted)


# --------------------------------------------------------------------------------------------------------------------
# Writing: every file goes through files.atomic_file / atomic_folder (temporary, then rename; umask modes); an
# existing destination is refused unless ``overwrite``; a failed write leaves it untouched and says so in one line.


def _write_error(destination: Path, error: BaseException) -> OSError:
    """One line for a write that failed (disk full, permissions…); the destination was left as it was."""
    text = str(error)
    full = getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text or "StorageFull" in text
    reason = "no space left on device" if full else (getattr(error, "strerror", None) or _first_line(error))
    failure = OSError(
        f"could not write {destination}: {reason}; nothing was changed there — free some space or choose another "
        "destination."
    )
    failure.errno = errno.ENOSPC if full else getattr(error, "errno", None)
    return failure


def _write_file(path: str | os.PathLike, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Run ``write(temporary)`` and move the result onto ``path`` (refused if it exists, unless ``overwrite``)."""
    path = check_destination(path, overwrite)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name for the output (e.g. {path / 'longclip.safetensors'}).")
    try:
        with atomic_file(path) as temporary:
            write(temporary)
    except (OSError, SafetensorError) as error:
        raise _write_error(path, error) from error
    return path


def _text_state_dict(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.contiguous() for key, value in _to_text_model_keys(text_encoder.state_dict()).items()}


def save_safetensors_file(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike, *, metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write tensors as one safetensors file, atomically; an existing ``path`` is refused unless ``overwrite``."""
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    return _write_file(path, overwrite, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def save_comfy_file(text_encoder: nn.Module, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """One safetensors file in the layout ComfyUI's ``CLIPLoader`` reads (a 248-row table → Long-CLIP-L)."""
    config = getattr(text_encoder.config, "text_config", text_encoder.config)
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(config.to_dict())}
    return save_safetensors_file(_text_state_dict(text_encoder), path, metadata=metadata, overwrite=overwrite)


def transformers_to_openai(model: nn.Module) -> dict[str, torch.Tensor]:
    """A transformers CLIP model in the reference layout (``positional_embedding`` and ``_res`` both hold the table)."""
    state_dict = {key: value for key, value in model.state_dict().items()}
    text = _to_text_model_keys(state_dict)
    converted = _blocks_to_openai(text, "text_model.encoder.layers.", "transformer.resblocks.")
    table = text["text_model.embeddings.position_embedding.weight"]
    converted.update(
        {
            "token_embedding.weight": text["text_model.embeddings.token_embedding.weight"],
            "positional_embedding": table,
            "positional_embedding_res": table.clone(),
            "ln_final.weight": text["text_model.final_layer_norm.weight"],
            "ln_final.bias": text["text_model.final_layer_norm.bias"],
        }
    )
    if "text_projection.weight" in text:
        converted["text_projection"] = text["text_projection.weight"].t()
    if "visual_projection.weight" in state_dict:
        converted.update(_blocks_to_openai(state_dict, "vision_model.encoder.layers.", "visual.transformer.resblocks."))
        converted.update(
            {
                "visual.class_embedding": state_dict["vision_model.embeddings.class_embedding"],
                "visual.conv1.weight": state_dict["vision_model.embeddings.patch_embedding.weight"],
                "visual.positional_embedding": state_dict["vision_model.embeddings.position_embedding.weight"],
                "visual.ln_pre.weight": state_dict["vision_model.pre_layrnorm.weight"],
                "visual.ln_pre.bias": state_dict["vision_model.pre_layrnorm.bias"],
                "visual.ln_post.weight": state_dict["vision_model.post_layernorm.weight"],
                "visual.ln_post.bias": state_dict["vision_model.post_layernorm.bias"],
                "visual.proj": state_dict["visual_projection.weight"].t(),
            }
        )
    if "logit_scale" in state_dict:
        converted["logit_scale"] = state_dict["logit_scale"]
    return {key: value.contiguous() for key, value in converted.items()}


def _blocks_to_openai(state_dict: dict[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    inverse = {value: key for key, value in _BLOCK_NAMES.items()}
    converted = {}
    pattern = re.compile(re.escape(source) + r"(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state_dict.items():
        match = pattern.match(key)
        if not match:
            continue
        layer, name, kind = match.groups()
        prefix = f"{target}{layer}."
        if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if name == "self_attn.q_proj":
                parts = [state_dict[f"{source}{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                converted[f"{prefix}attn.in_proj_{kind}"] = torch.cat(parts)
        else:
            converted[f"{prefix}{inverse[name]}.{kind}"] = value
    return converted


def save_openai_file(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """The reference layout, as a torch file (``.pt``, what ``longclip.load`` reads) or safetensors."""
    state_dict = transformers_to_openai(model)
    if Path(path).suffix == ".safetensors":
        return save_safetensors_file(state_dict, path, metadata={"format": "pt"}, overwrite=overwrite)
    return _write_file(path, overwrite, lambda temporary: torch.save(state_dict, temporary))


def save_tokenizer(tokenizer: CLIPTokenizer, directory: Path) -> None:
    """``tokenizer.json`` plus ``vocab.json``/``merges.txt`` so old and new transformers versions read it."""
    tokenizer.save_pretrained(str(directory))
    vocab, merges = bpe_vocabulary()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merge_lines = ["#version: 0.2"] + [" ".join(merge) for merge in merges]
    (directory / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")


DIFFUSERS_PARTS = ("text_encoder", "tokenizer")  # what save_diffusers writes inside its folder; nothing else is touched
SDXL_BIGG_PARTS = ("text_encoder_2", "tokenizer_2")  # SDXL's second encoder (bigG) and its tokenizer


def _check_diffusers_destination(directory: Path, overwrite: bool, parts: tuple[str, str] = DIFFUSERS_PARTS) -> None:
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} is a file; a diffusers output is a folder ({parts[0]}/, {parts[1]}/).")
    for part in parts:
        check_destination(directory / part, overwrite)


def save_diffusers(
    text_encoder: nn.Module,
    directory: str | os.PathLike,
    tokenizer: CLIPTokenizer | None = None,
    *,
    overwrite: bool = False,
    pad_token_id: int = 0,
    parts: tuple[str, str] = DIFFUSERS_PARTS,
) -> Path:
    """Write ``directory/text_encoder/`` and ``directory/tokenizer/`` for ``from_pretrained``.

    ``parts``: the two folder names; :data:`SDXL_BIGG_PARTS` (``text_encoder_2/``, ``tokenizer_2/``) for SDXL's bigG,
    whose tokenizer then pads with ``"!"`` (id 0) like SDXL's ``tokenizer_2``.

    Without ``tokenizer``, CLIP's tokenizer is written at the encoder's length, padding with ``pad_token_id``: 0 (the
    default) for a fine-tuned Long-CLIP, as it was trained and as the Long-CLIP pipelines read it; 49407
    (end-of-text) for a stock CLIP stretched with KPS. Stock diffusers loading the folder then pads the same way.

    ``text_encoder/`` keeps the given class and ``config.json`` names it (``architectures``): a ``CLIPTextModel``
    (SD 1.x's and SDXL's ``text_encoder``, no projection) or a ``CLIPTextModelWithProjection`` (SDXL's bigG); so the
    matching plain ``from_pretrained`` loads it without a load report. A ``CLIPModel`` gives its text tower as a
    ``CLIPTextModel``. An existing ``text_encoder/`` or ``tokenizer/`` is refused unless ``overwrite``; even then only
    these two are replaced (both swapped in at the end), nothing else in ``directory``.
    """
    directory = Path(directory)
    _check_diffusers_destination(directory, overwrite, parts)
    if not isinstance(text_encoder, (CLIPTextModel, CLIPTextModelWithProjection)):
        text_encoder = load_text_encoder(text_encoder)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_max_length=_num_positions(text_encoder))
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id)
    try:
        with atomic_folder(directory / parts[0]) as encoder_folder, atomic_folder(directory / parts[1]) as tokenizer_folder:
            text_encoder.save_pretrained(str(encoder_folder))
            save_tokenizer(tokenizer, tokenizer_folder)
    except (OSError, SafetensorError) as error:
        raise _write_error(directory, error) from error
    return directory


def _num_positions(text_encoder: nn.Module) -> int:
    config = getattr(text_encoder.config, "text_config", text_encoder.config)
    return config.max_position_embeddings


def convert(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    to: Literal["diffusers", "comfy", "openai"] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Convert any readable checkpoint. ``to`` defaults from ``destination``: ``.safetensors`` → comfy,
    ``.pt`` → openai, anything else → a diffusers ``text_encoder/`` + ``tokenizer/`` folder.

    The destination is checked before the source is read: an existing one is refused unless ``overwrite``.
    """
    destination = Path(destination)
    if to is None:
        to = {".safetensors": "comfy", ".pt": "openai", ".pth": "openai"}.get(destination.suffix, "diffusers")
    if to not in ("diffusers", "comfy", "openai"):
        raise ValueError(f"Unknown target format {to!r}; choose diffusers, comfy or openai.")
    if to == "diffusers":
        _check_diffusers_destination(destination, overwrite)
    else:
        check_destination(destination, overwrite)
    if to == "openai":
        return save_openai_file(load_clip_model(source), destination, overwrite=overwrite)
    if to == "comfy":
        return save_comfy_file(load_text_encoder(source, with_projection=True), destination, overwrite=overwrite)
    return save_diffusers(load_text_encoder(source), destination, overwrite=overwrite)
