"""Write a trained model in every format the rest of the project (and the reference loader) reads.

The export folder is the run's: each format's path in it is replaced whole by a new export, but only when an earlier
export wrote it (listed in ``export-manifest.json``); anything else found there is left alone and the export refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPModel

from .. import checkpoints
from ..files import DestinationExistsError, atomic_file, atomic_folder
from .model import merged_model, text_encoder_from_clip

EXPORT_PATHS = {
    "openai": "longclip.pt",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "comfy": "longclip-text.safetensors",
    "sdxl": "sdxl",
    "comfy_g": "longclip-g.safetensors",
}
DEFAULT_FORMATS = ("openai", "diffusers", "transformers", "comfy")  # sdxl and comfy_g (for a bigG) when asked for
MANIFEST_NAME = "export-manifest.json"


def _exported_before(directory: Path) -> set[str]:
    """The paths (relative to ``directory``) an earlier export wrote there."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
        return {str(path) for path in manifest["paths"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def check_export_destination(directory: str | Path, formats: list[str] | tuple[str, ...]) -> None:
    """Refuse (``DestinationExistsError``) when a path the export would replace exists and no earlier export wrote it."""
    directory = Path(directory)
    unknown = [name for name in formats if name not in EXPORT_PATHS]
    if unknown:
        raise ValueError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(EXPORT_PATHS)}")
    if directory.exists() and not directory.is_dir():
        raise DestinationExistsError(f"export folder {directory} is a file; move it away or choose another --output-dir")
    ours = _exported_before(directory)
    for name in formats:
        target = directory / EXPORT_PATHS[name]
        if (target.exists() or target.is_symlink()) and EXPORT_PATHS[name] not in ours:
            raise DestinationExistsError(
                f"{target} exists and was not written by a longclip export; move it away or choose another --output-dir"
            )


def export_model(model: CLIPModel, directory: str | Path, formats: list[str] | tuple[str, ...] = DEFAULT_FORMATS) -> dict[str, Path]:
    """Export ``model`` under ``directory``; returns ``{format: path}``.

    ``openai``: the reference layout (``longclip.load`` and ``checkpoints.load_clip_model`` read it, both towers);
    ``diffusers``: ``text_encoder/`` + ``tokenizer/`` for Stable Diffusion pipelines; ``transformers``: a full
    ``CLIPModel`` folder; ``comfy``: one text-encoder safetensors for ComfyUI's ``CLIPLoader``. For a long bigG:
    ``sdxl``: ``text_encoder_2/`` (``CLIPTextModelWithProjection``) + ``tokenizer_2/`` (pads with ``"!"``, id 0, as
    SDXL's) for SDXL pipelines (``bigg=export/sdxl``) or to replace a diffusers SDXL folder's two; ``comfy_g``: one
    ComfyUI clip_g file (``text_model.*`` + ``text_projection.weight``). Every file is written atomically with the
    umask's modes; see the module docstring for what may be replaced.
    """
    directory = Path(directory)
    check_export_destination(directory, formats)
    plain = merged_model(model).eval()
    written: dict[str, Path] = {}
    for name in formats:
        target = directory / EXPORT_PATHS[name]
        # the paths were checked above (ours from an earlier export, or new): replacing them is allowed
        if name == "openai":
            checkpoints.save_openai_file(plain, target, overwrite=True)
        elif name in ("comfy", "comfy_g"):
            encoder = text_encoder_from_clip(plain, with_projection=name == "comfy_g")
            checkpoints.save_comfy_file(encoder, target, overwrite=True)
        elif name == "diffusers":
            with atomic_folder(target) as staging:  # whole, so nothing of an older export lingers
                checkpoints.save_diffusers(text_encoder_from_clip(plain), staging)
        elif name == "sdxl":
            with atomic_folder(target) as staging:
                encoder = text_encoder_from_clip(plain, with_projection=True)
                checkpoints.save_diffusers(encoder, staging, parts=checkpoints.SDXL_BIGG_PARTS)
        else:
            with atomic_folder(target) as staging:
                plain.save_pretrained(str(staging))
        written[name] = target
        _record_export(directory, name)
    return written


def _record_export(directory: Path, name: str) -> None:
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        paths = dict(manifest["paths"])
    except (OSError, ValueError, KeyError, TypeError):
        paths = {}
    paths[name] = EXPORT_PATHS[name]
    with atomic_file(manifest_path) as temporary:
        temporary.write_text(json.dumps({"paths": paths}, indent=2) + "\n", encoding="utf-8")
