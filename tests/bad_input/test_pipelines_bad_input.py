"""Bad input to the Long-CLIP pipelines: call arguments, embeddings passed in, weights, model mismatches and swaps.

One table: each case names the surface (a pipeline call, ``encode_prompt``, ``apply_long_clip``, ``from_pretrained``,
the constructor), builds its input from tiny models, and expects an error (type + a phrase of its message) raised
before any denoising, or a sensible result. Cases that swap encoders also check the pipeline still works afterwards:
a failed swap leaves it as it was (SD and SDXL, including SDXL's refiner misdetection).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from longclip_diffusion.checkpoints import CheckpointError, save_comfy_file
from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline, LongCLIPStableDiffusionXLPipeline, apply_long_clip
from longclip_diffusion.prompts import num_positions
from longclip_diffusion.testing import clip_text_config, random_text_encoder, tiny_sd_components, tiny_sdxl_components

HUGE = "1" + "0" * 41  # a weight of 1e41, written as the syntax reads numbers


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Long-CLIP files (right and wrong width), a stock SD base and a saved Long-CLIP SD pipeline."""
    folder = tmp_path_factory.mktemp("models")
    save_comfy_file(random_text_encoder(clip_text_config(), with_projection=True, long=True, seed=3), folder / "long-32.safetensors")
    wide = random_text_encoder(clip_text_config(hidden_size=64), with_projection=True, long=True, seed=4)
    save_comfy_file(wide, folder / "long-64.safetensors")
    sdxl_clip_l = random_text_encoder(clip_text_config(hidden_size=16, num_attention_heads=2), long=True, seed=5)
    save_comfy_file(sdxl_clip_l, folder / "long-16.safetensors")  # the tiny SDXL's CLIP-L width
    StableDiffusionPipeline(**tiny_sd_components(long_clip=False)).save_pretrained(folder / "sd-base")
    LongCLIPStableDiffusionPipeline(**tiny_sd_components()).save_pretrained(folder / "sd-long")
    return folder


@cache
def sd() -> LongCLIPStableDiffusionPipeline:
    pipeline = LongCLIPStableDiffusionPipeline(**tiny_sd_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@cache
def sdxl() -> LongCLIPStableDiffusionXLPipeline:
    pipeline = LongCLIPStableDiffusionXLPipeline(**tiny_sdxl_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_sd():
    pipeline = StableDiffusionPipeline(**tiny_sd_components(long_clip=False))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def stock_sdxl():
    pipeline = StableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=False))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def call(pipeline, prompt="a cat", **kwargs):
    kwargs = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np", **kwargs}
    return pipeline(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images


def embeds(*shape, fill=0.1):
    return torch.full(shape, fill)


def works(pipeline) -> bool:
    """Still a working pipeline: it encodes and makes a finite image."""
    return bool(np.isfinite(call(pipeline, "a red fox in the snow")).all())


def not_a_refiner(pipeline) -> bool:
    """A failed SDXL swap must leave CLIP-L in place (a None text_encoder reads as a refiner) and the pipeline working."""
    return pipeline.text_encoder is not None and num_positions(pipeline.text_encoder) == 77 and works(pipeline)


def applied(pipeline, *args, **kwargs):
    """apply_long_clip on ``pipeline``; returns it for the after-check, raising what apply_long_clip raises."""
    holder["pipeline"] = pipeline
    return apply_long_clip(pipeline, *args, **kwargs)


holder: dict = {}

# Each case: (id, action(files) -> result, expected: (error type, phrase) or a check of the result, after-check or None).
# After-checks run on holder["pipeline"], the pipeline the action worked on.
CASES = [
    # SD 1.x calls
    ("sd-empty-prompt-list", lambda f: call(sd(), []), (ValueError, "empty list"), None),
    ("sd-prompt-not-text", lambda f: call(sd(), 42), (ValueError, "has to be of type"), None),  # diffusers' check
    ("sd-prompt-list-with-none", lambda f: call(sd(), ["a cat", None]), (TypeError, "string or a list"), None),
    ("sd-embeds-wrong-width", lambda f: call(sd(), None, prompt_embeds=embeds(1, 248, 16)), (ValueError, "16 wide"), None),
    ("sd-embeds-wrong-rank", lambda f: call(sd(), None, prompt_embeds=embeds(1, 32)), (ValueError, "[batch, positions, width]"), None),
    ("sd-embeds-77-positions", lambda f: call(sd(), None, prompt_embeds=embeds(1, 77, 32)), (ValueError, "248 positions"), None),
    ("sd-embeds-nan", lambda f: call(sd(), None, prompt_embeds=embeds(1, 248, 32, fill=float("nan"))), (ValueError, "NaN"), None),
    ("sd-embeds-inf-negative", lambda f: call(sd(), None, prompt_embeds=embeds(1, 248, 32), negative_prompt_embeds=embeds(1, 248, 32, fill=float("inf"))), (ValueError, "negative_prompt_embeds"), None),
    ("sd-zero-images", lambda f: call(sd(), num_images_per_prompt=0), (ValueError, "num_images_per_prompt"), None),
    ("sd-negative-images", lambda f: call(sd(), num_images_per_prompt=-2), (ValueError, "num_images_per_prompt"), None),
    ("sd-zero-steps", lambda f: call(sd(), num_inference_steps=0), (ValueError, "num_inference_steps"), None),
    ("sd-negative-steps", lambda f: call(sd(), num_inference_steps=-5), (ValueError, "num_inference_steps"), None),
    ("sd-negative-height", lambda f: call(sd(), height=-32), (ValueError, "height"), None),
    ("sd-zero-width", lambda f: call(sd(), width=0), (ValueError, "width"), None),
    ("sd-huge-weight", lambda f: call(sd(), f"a (cat:{HUGE})"), (ValueError, "outside the accepted range"), None),
    ("sd-nested-weights", lambda f: call(sd(), "a ((((cat:9))))"), (ValueError, "outside"), None),
    ("sd-negative-batch", lambda f: call(sd(), ["a", "b"], negative_prompt=["x"]), (ValueError, "batch size"), None),
    ("sd-negative-type", lambda f: call(sd(), ["a"], negative_prompt="x"), (TypeError, "same type"), None),
    ("sd-weight-at-limit", lambda f: call(sd(), "a (cat:10)"), lambda images: np.isfinite(images).all(), None),
    ("sd-very-long-prompt", lambda f: call(sd(), "word " * 600), lambda images: images.shape == (1, 32, 32, 3), None),
    # SDXL calls
    ("sdxl-empty-prompt-list", lambda f: call(sdxl(), []), (ValueError, "empty list"), None),
    ("sdxl-embeds-wrong-width", lambda f: call(sdxl(), None, prompt_embeds=embeds(1, 248, 16), pooled_prompt_embeds=embeds(1, 32)), (ValueError, "16 wide"), None),
    ("sdxl-embeds-without-pooled", lambda f: sdxl().encode_prompt(None, prompt_embeds=embeds(1, 248, 48)), (ValueError, "pooled_prompt_embeds"), None),
    ("sdxl-pooled-wrong-rank", lambda f: sdxl().encode_prompt(None, prompt_embeds=embeds(1, 248, 48), pooled_prompt_embeds=embeds(1, 1, 32)), (ValueError, "[batch, width]"), None),
    ("sdxl-prompt-2-batch", lambda f: call(sdxl(), ["a", "b"], prompt_2=["x"]), (ValueError, "prompt_2"), None),
    ("sdxl-zero-steps", lambda f: call(sdxl(), num_inference_steps=0), (ValueError, "num_inference_steps"), None),
    ("sdxl-negative-height", lambda f: call(sdxl(), height=-8), (ValueError, "height"), None),
    ("sdxl-huge-weight", lambda f: call(sdxl(), f"(cat:{HUGE})"), (ValueError, "outside"), None),
    ("sdxl-zero-images", lambda f: sdxl().encode_prompt("a cat", num_images_per_prompt=0), (ValueError, "num_images_per_prompt"), None),
    # Swaps into SD 1.x: refused, and the pipeline is left as it was
    ("sd-apply-missing-file", lambda f: applied(stock_sd(), f / "typo.pt"), (CheckpointError, "typo.pt"), works),
    ("sd-apply-wrong-width", lambda f: applied(stock_sd(), f / "long-64.safetensors"), (CheckpointError, "64 wide but the model reads 32"), works),
    ("sd-apply-restretch", lambda f: applied(LongCLIPStableDiffusionPipeline(**tiny_sd_components()), "stretch"), (ValueError, "already reads 248"), lambda p: num_positions(p.text_encoder) == 248 and works(p)),
    ("sd-apply-then-retry", lambda f: _fail_then_retry(f), lambda p: num_positions(p.text_encoder) == 248 and works(p), None),
    ("sd-apply-sdxl-option", lambda f: applied(stock_sd(), "stretch", bigg="windows"), (ValueError, "SDXL pipelines only"), lambda p: num_positions(p.text_encoder) == 77),
    ("sd-from-pretrained-restretch", lambda f: LongCLIPStableDiffusionPipeline.from_pretrained(f / "sd-long", long_clip="stretch"), (ValueError, "already reads 248"), None),
    ("sd-from-pretrained-wrong-width", lambda f: LongCLIPStableDiffusionPipeline.from_pretrained(f / "sd-base", long_clip=f / "long-64.safetensors"), (CheckpointError, "64 wide"), None),
    ("sd-constructor-wrong-width", lambda f: LongCLIPStableDiffusionPipeline(**{**tiny_sd_components(), "text_encoder": random_text_encoder(clip_text_config(hidden_size=64), long=True)}), (CheckpointError, "64 wide but the model reads 32"), None),
    ("apply-unsupported-pipeline", lambda f: apply_long_clip(torch.nn.Linear(2, 2), "stretch"), (TypeError, "not a pipeline of a supported family"), None),
    # Swaps into SDXL
    ("sdxl-apply-missing-file", lambda f: applied(stock_sdxl(), f / "typo.pt"), (CheckpointError, "typo.pt"), not_a_refiner),
    ("sdxl-apply-bad-bigg", lambda f: applied(stock_sdxl(), f / "long-16.safetensors", bigg=str(f / "typo.pt")), (CheckpointError, "typo.pt"), not_a_refiner),
    ("sdxl-apply-wrong-width", lambda f: applied(stock_sdxl(), f / "long-32.safetensors"), (CheckpointError, "32 wide but the model reads 16"), not_a_refiner),
    ("sdxl-apply-restretch", lambda f: applied(LongCLIPStableDiffusionXLPipeline(**tiny_sdxl_components()), "stretch"), (ValueError, "already reads 248"), lambda p: num_positions(p.text_encoder) == 248),
    ("sdxl-apply-bad-mode", lambda f: applied(stock_sdxl(), "stretch", bigg="windowz"), (CheckpointError, "windowz"), not_a_refiner),
    ("sdxl-apply-bad-hidden-state", lambda f: applied(stock_sdxl(), "stretch", hidden_state="last"), (ValueError, "hidden_state"), not_a_refiner),
    ("sdxl-constructor-wrong-width", lambda f: LongCLIPStableDiffusionXLPipeline(**{**tiny_sdxl_components(), "text_encoder": random_text_encoder(clip_text_config(hidden_size=24, num_attention_heads=2), long=True)}), (CheckpointError, "24 wide but the model reads 16"), None),
]


def _fail_then_retry(files: Path):
    """A failed swap, then a retry with a good file: the retry works (it used to find text_encoder None)."""
    pipeline = stock_sd()
    with pytest.raises(CheckpointError):
        apply_long_clip(pipeline, files / "typo.pt")
    return apply_long_clip(pipeline, files / "long-32.safetensors")


@pytest.mark.parametrize("action, expected, after", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_pipeline_bad_input(action, expected, after, files):
    holder.clear()
    if isinstance(expected, tuple):
        error_type, phrase = expected
        with pytest.raises(error_type) as error:
            action(files)
        assert phrase in str(error.value), str(error.value)
    else:
        assert expected(action(files))
    if after is not None:
        assert after(holder["pipeline"])


def test_errors_come_before_denoising():
    """Argument errors are raised before the UNet runs even once."""
    pipeline = LongCLIPStableDiffusionPipeline(**tiny_sd_components())
    calls = []
    pipeline.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    for kwargs in ({"num_inference_steps": 0}, {"height": -32}, {"num_images_per_prompt": 0}):
        with pytest.raises(ValueError):
            call(pipeline, **kwargs)
    with pytest.raises(ValueError):
        call(pipeline, f"(cat:{HUGE})")
    assert calls == []
