"""diffusers' ``from_pipe`` (pipelines sharing components) with every family, in both directions, and
``apply_long_clip`` on a pipeline that shares its components: the other pipeline reads and renders as before."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from longclip_diffusion.pipelines import (
    LongCLIPFluxPipeline,
    LongCLIPStableDiffusion3Pipeline,
    LongCLIPStableDiffusionPipeline,
    LongCLIPStableDiffusionXLPipeline,
    apply_long_clip,
)
from longclip_diffusion.testing import tiny_sd_components, tiny_sdxl_components
from longclip_diffusion.testing_mmdit import tiny_flux_components, tiny_sd3_components

SHORT = "a painting of a squirrel eating a burger"
LONG = " ".join(f"word{i % 10} tree" for i in range(60))  # 120 CLIP tokens

# stock class, our class, tiny components, our options: bigG read in windows, so nothing shared is stretched in place
FAMILIES = [
    pytest.param(StableDiffusionPipeline, LongCLIPStableDiffusionPipeline, tiny_sd_components, {}, id="sd15"),
    pytest.param(
        StableDiffusionXLPipeline, LongCLIPStableDiffusionXLPipeline, tiny_sdxl_components,
        {"long_clip_bigg_mode": "windows"}, id="sdxl",
    ),
    pytest.param(
        StableDiffusion3Pipeline, LongCLIPStableDiffusion3Pipeline, tiny_sd3_components,
        {"long_clip_bigg_mode": "windows"}, id="sd3",
    ),
    pytest.param(FluxPipeline, LongCLIPFluxPipeline, tiny_flux_components, {}, id="flux"),
]


def render(pipeline, prompt: str) -> torch.Tensor:
    takes_t5_length = "max_sequence_length" in inspect.signature(type(pipeline).__call__).parameters
    extra = {"max_sequence_length": 32} if takes_t5_length else {}
    generator = torch.Generator().manual_seed(0)
    return pipeline(
        prompt, height=32, width=32, num_inference_steps=2, generator=generator, output_type="latent", **extra
    ).images


def tokenizer_state(pipeline) -> tuple:
    return pipeline.tokenizer.pad_token_id, pipeline.tokenizer.model_max_length


def public_config(pipeline) -> dict:
    return {key: value for key, value in pipeline.config.items() if not key.startswith("_")}


@pytest.mark.parametrize(("stock_class", "our_class", "make_components", "options"), FAMILIES)
def test_from_pipe_both_ways_leaves_the_stock_pipeline_as_it_was(stock_class, our_class, make_components, options):
    stock = stock_class(**make_components(long_clip=False))
    stock.set_progress_bar_config(disable=True)
    long = make_components(long_clip=True)
    text = {"text_encoder": long["text_encoder"], "tokenizer": long["tokenizer"]}
    before, tokenizer_before = render(stock, SHORT), tokenizer_state(stock)

    ours = our_class.from_pipe(stock, **text, **options)
    direct = our_class(**{**stock.components, **text, **options})
    denoiser = "unet" if hasattr(stock, "unet") else "transformer"
    assert getattr(ours, denoiser) is getattr(stock, denoiser)  # shared, not copied
    torch.testing.assert_close(render(ours, LONG), render(direct, LONG), rtol=0, atol=0)

    assert tokenizer_state(stock) == tokenizer_before
    torch.testing.assert_close(render(stock, SHORT), before, rtol=0, atol=0)
    again = stock_class.from_pipe(ours)
    assert public_config(again) == public_config(stock)


@pytest.mark.parametrize(("stock_class", "our_class", "make_components", "options"), FAMILIES)
def test_apply_long_clip_leaves_a_pipeline_sharing_the_components_as_it_was(
    stock_class, our_class, make_components, options
):
    stock = stock_class(**make_components(long_clip=False))
    stock.set_progress_bar_config(disable=True)
    before, tokenizer_before = render(stock, SHORT), tokenizer_state(stock)
    shared = stock_class.from_pipe(stock)
    bigg = {"bigg": "windows"} if options else {}
    apply_long_clip(shared, make_components(long_clip=True)["text_encoder"], **bigg)
    assert shared.tokenizer.model_max_length == 248 and tokenizer_state(stock) == tokenizer_before
    torch.testing.assert_close(render(stock, SHORT), before, rtol=0, atol=0)
    assert render(shared, LONG).shape == before.shape
