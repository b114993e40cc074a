"""Long-CLIP checkpoints: detect, read and write every format users have.

Formats read (detected from key names, never from the file name):

* ``openai`` — the released Long-CLIP files (``longclip-L.pt``, ``longclip-B.pt``) and OpenAI/OpenCLIP state dicts:
  ``transformer.resblocks.*``, ``token_embedding.weight``, ``positional_embedding`` (+ ``positional_embedding_res``),
  ``ln_final.*``, ``text_projection``, optionally ``visual.*``. As a torch pickle or safetensors.
* ``transformers`` — Hugging Face CLIP layouts (``CLIPModel``, ``CLIPTextModel``, ``CLIPTextModelWithProjection``):
  a folder or Hub id with ``config.json``, or a bare state dict.
* ``comfy`` — ComfyUI's single-file text encoder: transformers key names (``text_model.*``,
  ``text_projection.weight``) in one safetensors file, with or without a prefix such as ``clip_l.``.

The effective position table of a Long-CLIP file is what the reference model adds at run time:
rows below ``keep`` (20) from ``positional_embedding``, rows from ``keep`` on from ``positional_embedding_res``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
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

from .tokenizer import END_OF_TEXT, START_OF_TEXT, bpe_vocabulary, load_tokenizer

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


class CheckpointError(ValueError):
    """A file that cannot be read as a CLIP text encoder; the message names the file and what to do."""


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
            f"{where}: the text encoder is {width} wide but the UNet needs {expected_width} "
            f"(its cross_attention_dim); use a Long-CLIP of the base's own CLIP size (Long-CLIP-L: 768 for SD 1.x "
            "and SDXL's text_encoder; a 1280-wide bigG for SDXL's text_encoder_2)."
        )


# --------------------------------------------------------------------------------------------------------------------
# Reading


def read_state_dict(path: str | os.PathLike, include: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (read lazily) or a torch pickle (``weights_only=True``, memory-mapped).

    ``include``: only keys starting with one of these prefixes are read (e.g. skip a vision tower).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")

    def wanted(key: str) -> bool:
        return include is None or key.startswith(include)

    if _is_safetensors(path):
        try:
            with safe_open(path, framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys() if wanted(key)}
        except (SafetensorError, OSError, RuntimeError) as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({error}); is it truncated?") from error

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise CheckpointError(
                f"{path}: cannot be read as a torch checkpoint ({str(error).splitlines()[0]}); "
                "it may be truncated or not a checkpoint at all."
            ) from error
    except Exception as error:  # pickle refusing code, bad zip, …
        raise CheckpointError(
            f"{path}: cannot be read safely ({str(error).splitlines()[0]}). Only plain state dicts are loaded "
            "(weights_only=True); re-save the file with torch.save(model.state_dict(), path)."
        ) from error

    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors; {_EXPECTED}.")
    return {key: value for key, value in loaded.items() if wanted(key)}


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
    if "token_embedding.weight" in keys and "positional_embedding" in keys:
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


def _openai_text_config(state_dict: dict[str, torch.Tensor]) -> CLIPTextConfig:
    width = state_dict["ln_final.weight"].shape[0]
    return CLIPTextConfig(
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        hidden_size=width,
        intermediate_size=state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        projection_dim=state_dict["text_projection"].shape[1] if "text_projection" in state_dict else width,
        num_hidden_layers=_count_layers(state_dict, "transformer.resblocks."),
        num_attention_heads=width // 64,
        max_position_embeddings=state_dict["positional_embedding"].shape[0],
        hidden_act="quick_gelu",
        bos_token_id=START_OF_TEXT,
        eos_token_id=END_OF_TEXT,
        pad_token_id=0,
    )


def _openai_vision_config(state_dict: dict[str, torch.Tensor]) -> CLIPVisionConfig:
    conv = state_dict["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        projection_dim=state_dict["visual.proj"].shape[1],
        num_hidden_layers=_count_layers(state_dict, "visual.transformer.resblocks."),
        num_attention_heads=width // 64,
        image_size=patch * grid,
        patch_size=patch,
        hidden_act="quick_gelu",
    )


def _count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)})


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
    state_dict: dict[str, torch.Tensor], keep: int = KEEP
) -> tuple[CLIPConfig | CLIPTextConfig, dict[str, torch.Tensor]]:
    """Convert an OpenAI/Long-CLIP state dict to transformers names (``CLIPModel`` if it has a vision tower)."""
    state_dict = _strip_module_prefix(state_dict)
    text_config = _openai_text_config(state_dict)
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
        vision_config=_openai_vision_config(state_dict).to_dict(),
        projection_dim=text_config.projection_dim,
    )
    return config, converted


def _transformers_text_config(state_dict: dict[str, torch.Tensor]) -> CLIPTextConfig:
    """Config of a bare transformers-layout text state dict (``text_model.*``); heads = width / 64 as in CLIP."""
    token_embedding = state_dict["text_model.embeddings.token_embedding.weight"]
    width = token_embedding.shape[1]
    projection = state_dict.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=token_embedding.shape[0],
        hidden_size=width,
        intermediate_size=state_dict["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        projection_dim=projection.shape[0] if projection is not None else width,
        num_hidden_layers=_count_layers(state_dict, "text_model.encoder.layers."),
        num_attention_heads=max(1, width // 64),
        max_position_embeddings=state_dict["text_model.embeddings.position_embedding.weight"].shape[0],
        hidden_act="quick_gelu",
        bos_token_id=START_OF_TEXT,
        eos_token_id=END_OF_TEXT,
        pad_token_id=0,
    )


def _to_text_model_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers/ComfyUI layouts → ``text_model.*`` + ``text_projection.weight`` (prefixes removed)."""
    (table_key,) = [key for key in state_dict if key.endswith(_TEXT_TABLE) and "vision" not in key]
    prefix = table_key[: -len(_TEXT_TABLE)]
    outer = prefix[: -len("text_model.")] if prefix.endswith("text_model.") else prefix
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            converted["text_model." + key[len(prefix) :]] = value
        elif key == outer + "text_projection.weight":
            converted["text_projection.weight"] = value
    return converted


def _build(model_class: type[PreTrainedModel], config, state_dict: dict[str, torch.Tensor], origin: str):
    """Instantiate without random init (meta device) and assign the given tensors."""
    with torch.device("meta"):
        model = model_class(config)
    expected = set(model.state_dict())
    if "text_model.embeddings.token_embedding.weight" not in expected:  # transformers >= 5 CLIPTextModel: no wrapper
        state_dict = {key.removeprefix("text_model."): value for key, value in state_dict.items()}
    state_dict = {key: value for key, value in state_dict.items() if key in expected}
    missing = expected - set(state_dict)
    if missing:
        raise CheckpointError(f"{origin}: missing {sorted(missing)[:5]} for a {model_class.__name__}; {_EXPECTED}.")
    model.load_state_dict(state_dict, strict=True, assign=True)
    for module in model.modules():
        table = getattr(module, "position_embedding", None)
        if isinstance(getattr(module, "position_ids", None), torch.Tensor) and isinstance(table, nn.Embedding):
            module.register_buffer("position_ids", torch.arange(table.num_embeddings).unsqueeze(0), persistent=False)
    return model.eval()


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
    """
    model_class = _text_model_class(with_projection)
    if isinstance(source, nn.Module):
        model = source if isinstance(source, model_class) else _rebuild(source, model_class)
    elif Path(source).is_file():
        model = _load_text_file(Path(source), model_class, keep)
    else:
        model = _load_pretrained(source, model_class, subfolder)
    return model.to(torch_dtype) if torch_dtype is not None else model


def _rebuild(model: nn.Module, model_class: type[PreTrainedModel]) -> PreTrainedModel:
    config = getattr(model.config, "text_config", model.config)
    state_dict = _to_text_model_keys(model.state_dict())
    return _build(model_class, config, state_dict, type(model).__name__)


def _load_text_file(path: Path, model_class: type[PreTrainedModel], keep: int) -> PreTrainedModel:
    state_dict = _strip_module_prefix(read_state_dict(path, include=None))
    try:
        layout = detect_format(state_dict)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if layout == "openai":
        config, converted = openai_to_transformers({k: v for k, v in state_dict.items() if not k.startswith("visual.")}, keep)
    else:
        converted = _to_text_model_keys(state_dict)
        saved_config = _safetensors_metadata(path).get(CONFIG_METADATA_KEY)
        config = CLIPTextConfig.from_dict(json.loads(saved_config)) if saved_config else _transformers_text_config(converted)
    if model_class is CLIPTextModelWithProjection and "text_projection.weight" not in converted:
        raise CheckpointError(f"{path}: has no text projection, which a CLIPTextModelWithProjection needs.")
    return _build(model_class, config, converted, str(path))


def _load_pretrained(source: str | os.PathLike, model_class: type[PreTrainedModel], subfolder: str | None, keep: int = KEEP):
    folder = Path(source)
    if not folder.exists() and (folder.is_absolute() or str(source).startswith(".") or folder.suffix in _WEIGHT_SUFFIXES):
        raise CheckpointError(f"{source}: no such file or folder.")
    if folder.is_dir():
        if subfolder is None and not (folder / "config.json").exists():
            if not (folder / "text_encoder" / "config.json").exists():
                raise CheckpointError(f"{folder}: a folder without config.json (nor text_encoder/config.json); {_EXPECTED}.")
            subfolder = "text_encoder"
        return model_class.from_pretrained(str(folder), subfolder=subfolder or "").eval()
    try:
        return model_class.from_pretrained(str(source), subfolder=subfolder or "").eval()
    except OSError as error:
        checkpoint = _hub_single_checkpoint(str(source)) if subfolder is None else None
        if checkpoint is not None:
            return _load_text_file(checkpoint, model_class, keep) if model_class is not CLIPModel else load_clip_model(checkpoint)
        raise CheckpointError(
            f"{source}: no such file or folder, and not loadable as a Hub id ({str(error).splitlines()[0]}). "
            "Check the path; a Hub id needs network access (or a filled cache with HF_HUB_OFFLINE=1)."
        ) from error


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


def load_clip_model(source: str | os.PathLike | CLIPModel, keep: int = KEEP) -> CLIPModel:
    """Load both towers as a transformers ``CLIPModel`` (an OpenAI file with ``visual.*`` or a CLIPModel folder)."""
    if isinstance(source, CLIPModel):
        return source
    path = Path(source)
    if not path.is_file():
        return _load_pretrained(source, CLIPModel, None)
    state_dict = _strip_module_prefix(read_state_dict(path))
    if detect_format(state_dict) == "openai":
        if "visual.proj" not in state_dict:
            raise CheckpointError(f"{path}: has no vision tower (`visual.*`); a CLIPModel needs both towers.")
        config, converted = openai_to_transformers(state_dict, keep)
    else:
        raise CheckpointError(f"{path}: a single-file text encoder has no vision tower; a CLIPModel needs both.")
    return _build(CLIPModel, config, converted, str(path))


# --------------------------------------------------------------------------------------------------------------------
# Writing


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _text_state_dict(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.contiguous() for key, value in _to_text_model_keys(text_encoder.state_dict()).items()}


def save_comfy_file(text_encoder: nn.Module, path: str | os.PathLike) -> Path:
    """One safetensors file in the layout ComfyUI's ``CLIPLoader`` reads (a 248-row table → Long-CLIP-L)."""
    path = Path(path)
    config = getattr(text_encoder.config, "text_config", text_encoder.config)
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(config.to_dict())}
    with _atomic_path(path) as temporary:
        save_file(_text_state_dict(text_encoder), str(temporary), metadata=metadata)
    return path


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


def save_openai_file(model: nn.Module, path: str | os.PathLike) -> Path:
    """The reference layout, as a torch file (``.pt``, what ``longclip.load`` reads) or safetensors."""
    path = Path(path)
    state_dict = transformers_to_openai(model)
    with _atomic_path(path) as temporary:
        if path.suffix == ".safetensors":
            save_file(state_dict, str(temporary), metadata={"format": "pt"})
        else:
            torch.save(state_dict, temporary)
    return path


def save_tokenizer(tokenizer: CLIPTokenizer, directory: Path) -> None:
    """``tokenizer.json`` plus ``vocab.json``/``merges.txt`` so old and new transformers versions read it."""
    tokenizer.save_pretrained(str(directory))
    vocab, merges = bpe_vocabulary()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merge_lines = ["#version: 0.2"] + [" ".join(merge) for merge in merges]
    (directory / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")


def save_diffusers(
    text_encoder: nn.Module, directory: str | os.PathLike, tokenizer: CLIPTokenizer | None = None
) -> Path:
    """Write ``directory/text_encoder/`` and ``directory/tokenizer/`` for ``from_pretrained`` (atomic per folder)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_max_length=_num_positions(text_encoder))
    staging = Path(tempfile.mkdtemp(prefix=".longclip-", dir=directory))
    try:
        text_encoder.save_pretrained(str(staging / "text_encoder"))
        save_tokenizer(tokenizer, staging / "tokenizer")
        for name in ("text_encoder", "tokenizer"):
            target = directory / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _num_positions(text_encoder: nn.Module) -> int:
    config = getattr(text_encoder.config, "text_config", text_encoder.config)
    return config.max_position_embeddings


def convert(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    to: Literal["diffusers", "comfy", "openai"] | None = None,
) -> Path:
    """Convert any readable checkpoint. ``to`` defaults from ``destination``: ``.safetensors`` → comfy,
    ``.pt`` → openai, anything else → a diffusers ``text_encoder/`` + ``tokenizer/`` folder."""
    destination = Path(destination)
    if to is None:
        to = {".safetensors": "comfy", ".pt": "openai", ".pth": "openai"}.get(destination.suffix, "diffusers")
    if to == "openai":
        return save_openai_file(load_clip_model(source), destination)
    text_encoder = load_text_encoder(source, with_projection=True)
    if to == "comfy":
        return save_comfy_file(text_encoder, destination)
    if to == "diffusers":
        return save_diffusers(text_encoder, destination)
    raise ValueError(f"Unknown target format {to!r}; choose diffusers, comfy or openai.")
