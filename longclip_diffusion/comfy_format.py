"""ComfyUI state-dict layouts for Long-CLIP (pure logic, importable without ComfyUI).

What ComfyUI (0.3.x, ``comfy/sd.py``, ``comfy/sd1_clip.py``, ``comfy/text_encoders/long_clipl.py``) expects:

* A single text-encoder file in ``CLIPLoader`` uses transformers key names without prefix:
  ``text_model.embeddings.{token,position}_embedding.weight``, ``text_model.encoder.layers.N.…``,
  ``text_model.final_layer_norm.*`` and optionally ``text_projection.weight`` ([width, width], a Linear weight).
  OpenAI keys (``transformer.resblocks.*``) are converted by ComfyUI itself, which keeps ``positional_embedding``
  for every row and drops ``positional_embedding_res``.
* It is detected as CLIP-L by ``text_model.encoder.layers.0.mlp.fc1.weight`` without layers 22/30; a position table
  of N rows sets ``max_position_embeddings`` = N (Long-CLIP: 248) only if ``text_model.encoder.layers.1.…`` exists.
  Every other size (width 768, 12 layers, 12 heads, 3072, quick_gelu) comes from ComfyUI's fixed JSON config, unless
  a ``{clip_l,clip_g}_model_config`` model option overrides it — which is what :func:`text_model_config` gives.
* Inside a ``comfy.sd.CLIP`` the encoders are ``clip_l.transformer.text_model.*``, ``clip_g.transformer.text_model.*``
  (``CLIP.get_sd()`` / ``load_sd(full_model=True)``), and the tokenizer length is ``tokenizer_data["clip_l_max_length"]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import checkpoints, positions

TABLE = "text_model.embeddings.position_embedding.weight"
PROJECTION = "text_projection.weight"


def comfy_text_state_dict(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model as ComfyUI's single-file layout (``text_model.*``, square ``text_projection``)."""
    state_dict = {}
    for key, value in text_encoder.state_dict().items():
        if key.endswith("position_ids") or "vision" in key or key.startswith(("visual_projection", "logit_scale")):
            continue
        if key == PROJECTION:
            state_dict[key] = value
        else:
            state_dict["text_model." + key.removeprefix("text_model.")] = value
    return square_projection(state_dict)


def square_projection(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """ComfyUI's text projection is [width, width]; a narrower one is zero-padded (its pooled output is unused in SD)."""
    projection = state_dict.get(prefix + PROJECTION)
    width = state_dict[prefix + TABLE].shape[1]
    if projection is None or projection.shape == (width, width):
        return state_dict
    state_dict = dict(state_dict)
    if projection.shape[0] > width:
        del state_dict[prefix + PROJECTION]
        return state_dict
    padded = projection.new_zeros(width, width)
    padded[: projection.shape[0]] = projection
    state_dict[prefix + PROJECTION] = padded
    return state_dict


def text_model_config(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, int]:
    """The shape keys of ComfyUI's CLIP text config, read from a ``text_model.*`` state dict.

    Heads and layers are counted by the core's :func:`~longclip_diffusion.checkpoints.attention_heads` (width / 64)
    and :func:`~longclip_diffusion.checkpoints.count_layers`, as when the core reads such a file.
    """
    layers = prefix + "text_model.encoder.layers."
    width = state_dict[prefix + TABLE].shape[1]
    return {
        "hidden_size": width,
        "num_attention_heads": checkpoints.attention_heads(width),
        "intermediate_size": state_dict[layers + "0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": checkpoints.count_layers(state_dict, layers),
        "max_position_embeddings": state_dict[prefix + TABLE].shape[0],
    }


def load_comfy_text_encoder(source: str | os.PathLike, keep: int = checkpoints.KEEP) -> dict[str, torch.Tensor]:
    """Any file or folder the core reads → ComfyUI layout, with the effective Long-CLIP position table."""
    try:
        text_encoder = checkpoints.load_text_encoder(source, with_projection=True, keep=keep)
    except checkpoints.CheckpointError as error:
        if "projection" not in str(error):
            raise
        text_encoder = checkpoints.load_text_encoder(source, keep=keep)
    return comfy_text_state_dict(text_encoder)


def encoder_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{"clip_l": "clip_l.transformer.", …}`` for every text encoder inside a ``CLIP.get_sd()`` state dict."""
    found = {}
    for key in state_dict:
        if key.endswith(TABLE):
            prefix = key[: -len(TABLE)]
            found[prefix.split(".")[0] if prefix else ""] = prefix
    return found


def stretch_state_dict(
    state_dict: dict[str, torch.Tensor], keep: int = 20, ratio: int = 4, names: tuple[str, ...] | None = None
) -> dict[str, torch.Tensor]:
    """KPS on every (or the named) encoder's position table of a ComfyUI-layout state dict; other tensors shared.

    An encoder that is already long (more than 77 positions) is refused, naming it; nothing is stretched then.
    """
    stretched = dict(state_dict)
    for name, prefix in encoder_prefixes(state_dict).items():
        if names is None or name in names:
            try:
                stretched[prefix + TABLE] = positions.stretch_positions(state_dict[prefix + TABLE], keep=keep, ratio=ratio)
            except ValueError as error:
                raise ValueError(f"{name or 'text encoder'}: {error}") from None
    return stretched


def with_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state_dict.items()}


def without_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def save_comfy_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a ComfyUI-layout text encoder (``text_model.*``) as one safetensors file, atomically.

    An existing ``path`` is refused unless ``overwrite`` (``files.DestinationExistsError``).
    """
    if TABLE not in state_dict:
        raise checkpoints.CheckpointError(f"{path}: nothing to save; expected `{TABLE}` in the state dict.")
    return checkpoints.save_safetensors_file(state_dict, path, metadata={"format": "pt"}, overwrite=overwrite)
