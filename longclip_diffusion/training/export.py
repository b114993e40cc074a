"""Write a trained model in every format the rest of the project (and the reference loader) reads."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from transformers import CLIPModel

from .. import checkpoints
from .model import merged_model, text_encoder_from_clip

EXPORT_PATHS = {
    "openai": "longclip.pt",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "comfy": "longclip-text.safetensors",
}


def export_model(model: CLIPModel, directory: str | Path, formats: list[str] | tuple[str, ...] = tuple(EXPORT_PATHS)) -> dict[str, Path]:
    """Export ``model`` under ``directory``; returns ``{format: path}``.

    ``openai``: the reference layout (``longclip.load`` and ``checkpoints.load_clip_model`` read it, both towers);
    ``diffusers``: ``text_encoder/`` + ``tokenizer/`` for Stable Diffusion pipelines; ``transformers``: a full
    ``CLIPModel`` folder; ``comfy``: one text-encoder safetensors for ComfyUI's ``CLIPLoader``.
    """
    directory = Path(directory)
    unknown = [name for name in formats if name not in EXPORT_PATHS]
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(EXPORT_PATHS)}")
    plain = merged_model(model).eval()
    written: dict[str, Path] = {}
    for name in formats:
        target = directory / EXPORT_PATHS[name]
        if name == "openai":
            written[name] = checkpoints.save_openai_file(plain, target)
        elif name == "diffusers":
            written[name] = checkpoints.save_diffusers(text_encoder_from_clip(plain), target)
        elif name == "transformers":
            written[name] = _save_pretrained_atomic(plain, target)
        else:
            written[name] = checkpoints.save_comfy_file(text_encoder_from_clip(plain), target)
    return written


def _save_pretrained_atomic(model: CLIPModel, target: Path) -> Path:
    """``save_pretrained`` into a temporary folder beside ``target``, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(staging))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
