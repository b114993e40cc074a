"""diffusers pipelines with Long-CLIP text encoders (installed as ``longclip_diffusion.pipelines``)."""

from .stable_diffusion import LongCLIPStableDiffusionPipeline, apply_long_clip

__all__ = ["LongCLIPStableDiffusionPipeline", "apply_long_clip"]
