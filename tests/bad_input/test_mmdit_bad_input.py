"""Bad input to the SD3 and Flux pipelines: prompts, embeddings, call arguments, encoder swaps and settings.

One table: each case builds a tiny pipeline, names the surface it goes through and expects an error (type + a phrase
of its one-line message) raised before any denoising, or — for input that is fine but unusual — a sensible result.
"""

from __future__ import annotations

import logging
import types

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from longclip_diffusion.checkpoints import CheckpointError
from longclip_diffusion.pipelines import LongCLIPFluxPipeline, LongCLIPStableDiffusion3Pipeline, apply_long_clip
from longclip_diffusion.testing import clip_text_config, random_text_encoder
from longclip_diffusion.testing_mmdit import tiny_flux_components, tiny_sd3_components

LONG = " ".join(f"word{i % 10} tree" for i in range(120))  # ≈ 360 CLIP tokens: past 248


def flux() -> LongCLIPFluxPipeline:
    return LongCLIPFluxPipeline(**tiny_flux_components())


def sd3() -> LongCLIPStableDiffusion3Pipeline:
    return apply_long_clip(LongCLIPStableDiffusion3Pipeline(**tiny_sd3_components()), None)


def flux_encode(prompt, **kwargs):
    return lambda tmp_path: flux().encode_prompt(prompt, max_sequence_length=16, **kwargs)


def sd3_encode(prompt, **kwargs):
    arguments = {"prompt_2": None, "prompt_3": None, "max_sequence_length": 16, **kwargs}
    return lambda tmp_path: sd3().encode_prompt(prompt, **arguments)


def call(make, prompt="a cat", **kwargs):
    arguments = dict(height=16, width=16, num_inference_steps=1, max_sequence_length=16, output_type="pt")
    return lambda tmp_path: make()(prompt, **{**arguments, **kwargs})


def built(source, tmp_path):
    return source(tmp_path) if isinstance(source, types.FunctionType) else source


def flux_apply(source, **options):
    return lambda tmp_path: apply_long_clip(FluxPipeline(**tiny_flux_components(long_clip=False)),
                                            built(source, tmp_path), **options)


def sd3_apply(source, **options):
    return lambda tmp_path: apply_long_clip(StableDiffusion3Pipeline(**tiny_sd3_components(long_clip=False)),
                                            built(source, tmp_path), **options)


def restretch(make):
    def run(tmp_path):
        pipeline = make()
        apply_long_clip(pipeline, "stretch")
        return apply_long_clip(pipeline, "stretch")
    return run


def sd3_77_bigg_without_stretch(tmp_path):
    pipeline = LongCLIPStableDiffusion3Pipeline(**tiny_sd3_components())  # bigG still 77, mode "stretch" not applied
    return pipeline.encode_prompt("a cat", None, None, max_sequence_length=16)


def sd3_t5_narrower_than_clips(tmp_path):
    components = tiny_sd3_components()
    t5 = components["text_encoder_3"]
    components["text_encoder_3"] = type(t5)(type(t5.config)(**{**t5.config.to_dict(), "d_model": 40}))
    return apply_long_clip(LongCLIPStableDiffusion3Pipeline(**components), None).encode_prompt(
        "a cat", None, None, max_sequence_length=16
    )


def wide_encoder(with_projection: bool):
    return random_text_encoder(clip_text_config(hidden_size=48, projection_dim=48), with_projection=with_projection, long=True)


def flux_over_length(tmp_path):
    """Over 248 CLIP tokens and over T5's max_sequence_length: cut, with warnings naming the dropped words."""
    prompt_embeds, pooled, _ = flux().encode_prompt(LONG, max_sequence_length=16)
    return prompt_embeds.shape, pooled.shape


NAN = torch.full((1, 16, 32), float("nan"))

CASES = [
    # Flux: prompts and embeddings (encode_prompt, before any denoising)
    pytest.param(flux_encode([]), ValueError, "empty list", id="flux-empty-prompt-list"),
    pytest.param(flux_encode(123), TypeError, "must be a string", id="flux-prompt-not-text"),
    pytest.param(flux_encode(["a", 5]), TypeError, "must be a string", id="flux-prompt-list-with-number"),
    pytest.param(flux_encode(None), ValueError, "`prompt_embeds`; both are None", id="flux-no-prompt"),
    pytest.param(flux_encode("a (cat:50)"), ValueError, "outside the accepted range", id="flux-huge-weight"),
    pytest.param(flux_encode("a (cat:1e41) (dog:nan)"), None, None, id="flux-non-decimal-weights-are-literal-text"),
    pytest.param(flux_encode("a cat", num_images_per_prompt=0), ValueError, "num_images_per_prompt", id="flux-zero-images"),
    pytest.param(flux_encode(None, prompt_embeds=torch.zeros(16, 32), pooled_prompt_embeds=torch.zeros(1, 32)),
                 ValueError, "`prompt_embeds` must be a tensor [batch, positions, width]", id="flux-embeds-rank"),
    pytest.param(flux_encode(None, prompt_embeds=torch.zeros(1, 16, 32), pooled_prompt_embeds=torch.zeros(32)),
                 ValueError, "`pooled_prompt_embeds` must be a tensor [batch, width]", id="flux-pooled-rank"),
    pytest.param(flux_encode(None, prompt_embeds=torch.zeros(1, 16, 768), pooled_prompt_embeds=torch.zeros(1, 32)),
                 ValueError, "`prompt_embeds` is 768 wide but this pipeline needs 32", id="flux-embeds-width"),
    pytest.param(flux_encode(None, prompt_embeds=torch.zeros(1, 16, 32), pooled_prompt_embeds=torch.zeros(1, 768)),
                 ValueError, "`pooled_prompt_embeds` is 768 wide but this pipeline needs 32", id="flux-pooled-width"),
    pytest.param(flux_encode(None, prompt_embeds=NAN, pooled_prompt_embeds=torch.zeros(1, 32)),
                 ValueError, "NaN or infinite", id="flux-nan-embeds"),
    pytest.param(flux_over_length, None, None, id="flux-over-248-and-over-t5-length"),
    # Flux: __call__ arguments
    pytest.param(call(flux, num_inference_steps=0), ValueError, "num_inference_steps", id="flux-zero-steps"),
    pytest.param(call(flux, height=-16), ValueError, "`height` must be a positive", id="flux-negative-height"),
    # Flux: apply_long_clip (the pipeline is left as it was)
    pytest.param(flux_apply(lambda tmp_path: tmp_path / "nope.safetensors"), CheckpointError, "no such file",
                 id="flux-missing-file"),
    pytest.param(flux_apply(wide_encoder(False)), CheckpointError, "48 wide", id="flux-wrong-width"),
    pytest.param(flux_apply("stretch", bigg="windows"), ValueError, "does not apply to Flux", id="flux-bigg-option"),
    pytest.param(flux_apply(None), ValueError, "pass `long_clip`", id="flux-no-long-clip-on-77"),
    pytest.param(lambda tmp_path: apply_long_clip(FluxPipeline(**tiny_flux_components()), None).encode_prompt(LONG),
                 None, None, id="flux-already-long-without-long-clip"),
    pytest.param(restretch(lambda: FluxPipeline(**tiny_flux_components(long_clip=False))), ValueError,
                 "already reads 248", id="flux-stretch-twice"),
    pytest.param(lambda tmp_path: apply_long_clip(torch.nn.Linear(2, 2), "stretch"), TypeError,
                 "not a pipeline of a supported family", id="not-a-pipeline"),
    # SD3: prompts, negatives, embeddings
    pytest.param(sd3_encode([]), ValueError, "empty list", id="sd3-empty-prompt-list"),
    pytest.param(sd3_encode(["a", "b"], negative_prompt=["x"]), ValueError, "`negative_prompt` has batch size 1",
                 id="sd3-negative-batch"),
    pytest.param(sd3_encode(["a", "b"], prompt_2=["x", "y", "z"]), ValueError, "`prompt_2` has batch size 3",
                 id="sd3-prompt-2-batch"),
    pytest.param(sd3_encode("a", negative_prompt_3=7), TypeError, "`negative_prompt_3` must be a string",
                 id="sd3-negative-3-type"),
    pytest.param(sd3_encode("a (cat:-20)"), ValueError, "outside the accepted range", id="sd3-huge-negative-weight"),
    pytest.param(sd3_encode(None, prompt_embeds=torch.zeros(1, 16, 64), pooled_prompt_embeds=torch.zeros(1, 48),
                            negative_prompt_embeds=torch.zeros(1, 16, 64), negative_pooled_prompt_embeds=torch.zeros(48)),
                 ValueError, "`negative_pooled_prompt_embeds` must be a tensor", id="sd3-negative-pooled-rank"),
    pytest.param(sd3_encode(None, prompt_embeds=torch.zeros(1, 16, 64), pooled_prompt_embeds=torch.zeros(1, 2048),
                            do_classifier_free_guidance=False),
                 ValueError, "`pooled_prompt_embeds` is 2048 wide but this pipeline needs 48", id="sd3-pooled-width"),
    pytest.param(sd3_77_bigg_without_stretch, ValueError, "(bigG) reads 77 positions", id="sd3-bigg-not-long"),
    pytest.param(sd3_t5_narrower_than_clips, ValueError, "more than T5's 40", id="sd3-clips-wider-than-t5"),
    pytest.param(call(sd3, num_inference_steps=2.5), ValueError, "num_inference_steps", id="sd3-fractional-steps"),
    # SD3: apply_long_clip and settings
    pytest.param(sd3_apply("stretch", bigg="stretched"), ValueError, "`bigg` must be one of", id="sd3-unknown-bigg-mode"),
    pytest.param(sd3_apply(None), ValueError, "pass `long_clip`", id="sd3-no-long-clip-on-77"),
    pytest.param(sd3_apply(wide_encoder(True)), CheckpointError, "48 wide", id="sd3-wrong-width"),
    pytest.param(sd3_apply("stretch", bigg=wide_encoder(True)), CheckpointError, "48 wide", id="sd3-wrong-bigg-width"),
    pytest.param(sd3_apply("stretch", hidden_state="final_norm"), ValueError, "does not apply to SD3",
                 id="sd3-hidden-state-option"),
    pytest.param(restretch(lambda: StableDiffusion3Pipeline(**tiny_sd3_components(long_clip=False))), ValueError,
                 "already reads 248", id="sd3-stretch-twice"),
    pytest.param(lambda tmp_path: LongCLIPStableDiffusion3Pipeline(**{**tiny_sd3_components(), "text_encoder": wide_encoder(True)}),
                 ValueError, "project to 48 + 32 = 80 but the transformer reads a pooled vector of 48",
                 id="sd3-constructed-with-wrong-width"),
    pytest.param(lambda tmp_path: LongCLIPStableDiffusion3Pipeline(**tiny_sd3_components(), long_clip_bigg_mode="window"),
                 ValueError, "`long_clip_bigg_mode` must be one of", id="sd3-config-bigg-mode"),
]


@pytest.mark.parametrize("build, error, phrase", CASES)
def test_bad_mmdit_input(tmp_path, caplog, build, error, phrase):
    if error is None:
        with caplog.at_level(logging.WARNING):
            result = build(tmp_path)
        assert result is not None
        return
    with pytest.raises(error) as raised:
        build(tmp_path)
    assert phrase in str(raised.value)
    assert "\n" not in str(raised.value).strip()
