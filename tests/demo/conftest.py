"""Tiny random models for the demo's tests (no network, no downloaded weights)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TINY_SIZE = 64  # pixels; the tiny VAE halves it, so 32×32 latents


class TinyLoader:
    """``model_loader`` for ``build_demo``: tiny in-memory pipelines, counting its calls.

    ``base == "tiny"`` loads; any other base fails like diffusers does for a missing model.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, spec):
        from diffusers import StableDiffusionPipeline

        from longclip_diffusion.demo.models import LoadedModels
        from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline
        from longclip_diffusion.testing import tiny_sd_components

        self.calls.append(spec)
        if spec.base != "tiny":
            raise OSError(
                f"{spec.base} does not appear to have a file named model_index.json. "
                "Checkout 'https://huggingface.co/missing' for available files."
            )
        long_pipe = LongCLIPStableDiffusionPipeline(**tiny_sd_components(long_clip=True))
        stock_components = tiny_sd_components(long_clip=False)
        # Share the UNet/VAE as the real loader does; only the text side differs.
        stock_components.update(unet=long_pipe.unet, vae=long_pipe.vae)
        stock_pipe = StableDiffusionPipeline(**stock_components)
        for pipe in (long_pipe, stock_pipe):
            pipe.set_progress_bar_config(disable=True)
        return LoadedModels(long_pipe, stock=stock_pipe)


@pytest.fixture
def tiny_loader():
    return TinyLoader()


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A tiny stock SD 1.x pipeline saved as a local diffusers folder (what `--base ./folder` reads)."""
    from diffusers import StableDiffusionPipeline

    from longclip_diffusion.testing import tiny_sd_components

    folder = tmp_path_factory.mktemp("tiny-sd15")
    StableDiffusionPipeline(**tiny_sd_components(long_clip=False)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory):
    """A tiny stock SDXL pipeline saved as a local diffusers folder."""
    from diffusers import StableDiffusionXLPipeline

    from longclip_diffusion.testing import tiny_sdxl_components

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    StableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=False)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd3_folder(tmp_path_factory):
    """A tiny stock SD3 pipeline (CLIP-L, bigG, T5) saved as a local diffusers folder."""
    from diffusers import StableDiffusion3Pipeline

    from longclip_diffusion.testing_mmdit import tiny_sd3_components

    folder = tmp_path_factory.mktemp("tiny-sd3")
    StableDiffusion3Pipeline(**tiny_sd3_components(long_clip=False)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_flux_folder(tmp_path_factory):
    """A tiny stock Flux pipeline (CLIP-L, T5) saved as a local diffusers folder."""
    from diffusers import FluxPipeline

    from longclip_diffusion.testing_mmdit import tiny_flux_components

    folder = tmp_path_factory.mktemp("tiny-flux")
    FluxPipeline(**tiny_flux_components(long_clip=False)).save_pretrained(folder)
    return folder
