"""diffusers pipelines with Long-CLIP text encoders (installed as ``longclip_diffusion.pipelines``).

:mod:`.core` holds what every family shares (and the :func:`apply_long_clip` dispatcher); each family's file holds
only what differs and registers itself when imported here.
"""

from ..prompts import encode_windows  # moved to the core; kept importable here
from .core import apply_long_clip
from .flux import LongCLIPFluxPipeline
from .stable_diffusion import LongCLIPStableDiffusionPipeline
from .stable_diffusion_3 import LongCLIPStableDiffusion3Pipeline
from .stable_diffusion_xl import LongCLIPStableDiffusionXLPipeline

__all__ = [
    "LongCLIPFluxPipeline",
    "LongCLIPStableDiffusion3Pipeline",
    "LongCLIPStableDiffusionPipeline",
    "LongCLIPStableDiffusionXLPipeline",
    "apply_long_clip",
    "encode_windows",
]
