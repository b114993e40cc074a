"""Defaults every surface shares (CLI, demo, nodes): base model per family, Long-CLIP checkpoint, device and dtype,
token limits. Imports nothing heavy: torch is imported only inside :func:`pick_device_and_dtype`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Family = Literal["sd15", "sdxl", "sd3", "flux"]
FAMILIES: tuple[Family, ...] = ("sd15", "sdxl", "sd3", "flux")

# Hub id of the base model each family starts from when none is given.
DEFAULT_BASE: dict[Family, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
    "flux": "black-forest-labs/FLUX.1-dev",
}
DEFAULT_LONG_CLIP = "BeichenZhang/LongCLIP-L"

# How each family is named to people, and the class `longclip_diffusion.pipelines` exports for it (looked up by name,
# so the CLI and the demo need no pipeline import to build their menus).
FAMILY_LABELS: dict[Family, str] = {"sd15": "SD 1.5", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}
PIPELINE_CLASS_NAMES: dict[Family, str] = {
    "sd15": "LongCLIPStableDiffusionPipeline",
    "sdxl": "LongCLIPStableDiffusionXLPipeline",
    "sd3": "LongCLIPStableDiffusion3Pipeline",
    "flux": "LongCLIPFluxPipeline",
}

# Token limits count the start and end tokens, as CLIP's 77 does.
CLIP_TOKEN_LIMIT = 77
LONG_CLIP_TOKEN_LIMIT = 248
SPECIAL_TOKENS_PER_PROMPT = 2  # start-of-text and end-of-text
LONG_CLIP_CONTENT_TOKENS = LONG_CLIP_TOKEN_LIMIT - SPECIAL_TOKENS_PER_PROMPT


def content_tokens(limit: int) -> int:
    """How many prompt tokens an encoder of ``limit`` positions reads (its start and end tokens excluded)."""
    return limit - SPECIAL_TOKENS_PER_PROMPT


def pick_device_and_dtype(device: str | None = None) -> tuple[str, torch.dtype]:
    """The device to run on (``device``, else cuda, mps, cpu — the first available) and its dtype.

    float16 on cuda and mps (half the memory, the precision SD/SDXL weights are published in; diffusers upcasts the
    SDXL VAE itself), float32 on cpu (half precision is slow or unsupported there).
    """
    import torch

    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    kind = device.split(":", 1)[0]
    return device, torch.float16 if kind in ("cuda", "mps") else torch.float32
