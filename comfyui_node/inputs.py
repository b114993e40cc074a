"""What the Long-CLIP nodes read from their inputs, checked before any model is built.

No ComfyUI import here, so tests/bad_input runs these checks without a ComfyUI checkout. Every error names the node
input and the file, says what is wrong and what to choose instead.
"""

from __future__ import annotations

import os

import torch

from longclip_diffusion import checkpoints, comfy_format

# The encoder widths each slot has in the families ComfyUI knows (SDXL, SD3, Flux): the diffusion models are built
# for them (SD3's joint sequence pads clip_l + clip_g to T5's 4096; Flux's vector_in reads CLIP-L's 768).
SLOT_WIDTHS = {"clip_l": 768, "clip_g": 1280, "t5xxl": 4096}
_WHAT_FITS = {
    "clip_l": "CLIP-L (768 wide): choose a Long-CLIP-L file such as longclip-L.pt, not Long-CLIP-B (512) or a bigG "
    "(1280)",
    "clip_g": "CLIP-G/bigG (1280 wide): choose clip_g.safetensors (SD3) or SDXL's second encoder, not a CLIP-L (768) "
    "or CLIP-H (1024)",
    "t5xxl": "T5-XXL (4096 wide): choose t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors, not T5-XL/T5-base",
}
T5_ATTENTION = "encoder.block.0.layer.0.SelfAttention."
T5_FEED_FORWARD = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"  # T5 v1.1 (gated), as in Flux and SD3
T5_KEYS = ("shared.weight", "encoder.final_layer_norm.weight", T5_ATTENTION + "q.weight",
           T5_ATTENTION + "relative_attention_bias.weight", T5_FEED_FORWARD)


def check_choice(value: str, options: list[str], input_name: str) -> None:
    """Refuse a combo value ComfyUI's front end would not offer (API graphs are not checked against the list)."""
    if value not in options:
        raise ValueError(f"{input_name} must be one of {', '.join(options)}; got {value!r}.")


def encoder_path(name: str, roots: list[str], input_name: str) -> str:
    """The file (or, for a name ending in ``/``, the transformers folder) ``name`` in one of the ``roots``.

    Only names inside a root are accepted: an absolute path or ``..`` (typed into an API graph) is refused.
    """
    relative = os.path.normpath(name.rstrip("/")) if name.strip("/") else ""
    if not relative or os.path.isabs(relative) or relative.split(os.sep)[0] == "..":
        raise ValueError(
            f"{input_name} {name!r} is not a file name inside models/text_encoders; choose one from the list."
        )
    exists = os.path.isdir if name.endswith("/") else os.path.isfile
    for root in roots:
        if exists(os.path.join(root, relative)):
            return os.path.join(root, relative)
    raise FileNotFoundError(
        f"{input_name} {name!r} is not in {' or '.join(roots) or 'models/text_encoders'} (any more); put it there and "
        "refresh the node list (R)."
    )


def check_width(state_dict: dict[str, torch.Tensor], slot: str, family: str, input_name: str, path: str) -> None:
    """Refuse an encoder whose width is not the one ``family`` reads in ``slot`` (named with the file)."""
    width = checkpoints.text_encoder_width(state_dict) if slot != "t5xxl" else state_dict["shared.weight"].shape[1]
    if width != SLOT_WIDTHS[slot]:
        raise ValueError(
            f"{input_name} {os.path.basename(path.rstrip('/'))!r} is a {width}-wide text encoder; {family}'s {slot} is "
            f"{_WHAT_FITS[slot]}."
        )


def read_clip(path: str, slot: str, family: str, input_name: str) -> dict[str, torch.Tensor]:
    """A CLIP or Long-CLIP text encoder in ComfyUI's layout with the effective position table, of ``slot``'s width."""
    state_dict = comfy_format.load_comfy_text_encoder(path)
    check_width(state_dict, slot, family, input_name, path)
    return state_dict


def read_clip_g(path: str, family: str, input_name: str) -> dict[str, torch.Tensor]:
    """A bigG for the clip_g slot: 1280 wide, with its text projection (SDXL's and SD3's pooled vectors are clip_g's
    projected end-of-text feature; ComfyUI would load a file without one and leave the projection uninitialised)."""
    state_dict = read_clip(path, "clip_g", family, input_name)
    if comfy_format.PROJECTION not in state_dict:
        name = os.path.basename(path.rstrip("/"))
        raise ValueError(
            f"{input_name} {name!r} has no text projection; {family}'s pooled vector is clip_g's projected end-of-text "
            "feature: choose a bigG file saved with its projection (`longclip train --export comfy_g` writes one)."
        )
    return state_dict


def read_long_clip_g(path: str, positions: int, input_name: str) -> dict[str, torch.Tensor]:
    """A long bigG for SDXL's clip_g slot, used as it is: a clip_g (:func:`read_clip_g`) with ``positions`` rows
    (Long-CLIP-L's)."""
    state_dict = read_clip_g(path, "SDXL", input_name)
    found = state_dict[comfy_format.TABLE].shape[0]
    if found != positions:
        name = os.path.basename(path.rstrip("/"))
        raise ValueError(
            f"{input_name} {name!r} has {found} positions; it must have {positions}, as long_clip_l: choose a long bigG "
            f"(e.g. longclip-g.safetensors from `longclip train --export comfy_g`), or leave {input_name} at none to "
            "stretch or window the checkpoint's clip_g."
        )
    return state_dict


def read_t5(path: str, family: str, input_name: str) -> dict[str, torch.Tensor]:
    """A T5-XXL encoder file in ComfyUI's layout (``shared.weight``, ``encoder.block.N.…``), of T5-XXL's width."""
    state_dict = checkpoints.read_state_dict(path)
    missing = [key for key in T5_KEYS if key not in state_dict]
    if missing:
        raise checkpoints.CheckpointError(
            f"{path}: not a T5 encoder (no `{missing[0]}`; found keys like {sorted(state_dict)[:3]}); {input_name} "
            "takes the t5xxl file ComfyUI's DualCLIPLoader/TripleCLIPLoader read (e.g. t5xxl_fp16.safetensors)."
        )
    check_width(state_dict, "t5xxl", family, input_name, path)
    return state_dict


def t5_config(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """The shape keys of ComfyUI's T5 config (``t5_config_xxl.json``), read from a T5 v1.1 state dict."""
    heads = state_dict[T5_ATTENTION + "relative_attention_bias.weight"].shape[1]
    return {
        "d_model": state_dict["shared.weight"].shape[1],
        "vocab_size": state_dict["shared.weight"].shape[0],
        "num_layers": len({key.split(".")[2] for key in state_dict if key.startswith("encoder.block.")}),
        "num_heads": heads,
        "d_kv": state_dict[T5_ATTENTION + "q.weight"].shape[0] // heads,
        "d_ff": state_dict[T5_FEED_FORWARD].shape[0],
    }
