"""diffusers pipelines with Long-CLIP text encoders (installed as ``longclip_diffusion.pipelines``)."""

from .stable_diffusion import LongCLIPStableDiffusionPipeline, apply_long_clip
from .stable_diffusion_xl import LongCLIPStableDiffusionXLPipeline, encode_windows

__all__ = ["LongCLIPStableDiffusionPipeline", "LongCLIPStableDiffusionXLPipeline", "apply_long_clip", "encode_windows"]
