"""LongCLIPFluxPipeline and apply_long_clip on Flux pipelines, with tiny random components built in code (T5 and its
tokenizer too: the Hub is never asked)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxKontextPipeline, FluxPipeline

from longclip_diffusion.checkpoints import CheckpointError, load_text_encoder, save_comfy_file
from longclip_diffusion.pipelines import LongCLIPFluxPipeline, apply_long_clip
from longclip_diffusion.positions import position_embedding
from longclip_diffusion.testing import clip_text_config, merge_lora_by_hand, random_text_encoder, trained_lora
from longclip_diffusion.testing_mmdit import tiny_flux_components
from longclip_diffusion.tokenizer import END_OF_TEXT, load_tokenizer

TOLERANCE = dict(rtol=0, atol=1e-5)
SEQUENCE = 32  # T5 max_sequence_length for the tiny runs
PROMPT = "a painting of a squirrel eating a burger"
LONG = " ".join(f"word{i % 10} tree" for i in range(60))  # 120 CLIP tokens, well past 77


def make_pipeline(**overrides) -> LongCLIPFluxPipeline:
    components = tiny_flux_components(long_clip=True)
    components.update(overrides)
    pipeline = LongCLIPFluxPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def encode(pipeline, prompt, **kwargs):
    kwargs.setdefault("max_sequence_length", SEQUENCE)
    kwargs.setdefault("device", torch.device("cpu"))
    return pipeline.encode_prompt(prompt, **kwargs)


def image(pipeline, prompt=PROMPT, **kwargs) -> torch.Tensor:
    kwargs.setdefault("max_sequence_length", SEQUENCE)
    generator = torch.Generator().manual_seed(0)
    return pipeline(prompt, height=16, width=16, num_inference_steps=2, generator=generator, output_type="pt",
                    **kwargs).images


def stock_with_same_components(pipeline) -> FluxPipeline:
    """Stock diffusers FluxPipeline with our long encoder and a 248-token tokenizer padding the same way."""
    components = dict(pipeline.components, tokenizer=load_tokenizer(248))
    stock = FluxPipeline(**components)
    stock.set_progress_bar_config(disable=True)
    assert stock.tokenizer_max_length == 248
    return stock


# --------------------------------------------------------------------------------------------------------------------
# Fidelity


def test_equals_stock_flux_given_the_same_long_encoder():
    pipeline = make_pipeline()
    stock = stock_with_same_components(pipeline)
    prompts = [PROMPT, LONG]
    ours, stocks = encode(pipeline, prompts), encode(stock, prompts)
    assert ours[0].shape == (2, SEQUENCE, 32) and ours[1].shape == (2, 32)
    for got, want in zip(ours, stocks):
        torch.testing.assert_close(got, want, **TOLERANCE)
    torch.testing.assert_close(image(pipeline, LONG), image(stock, LONG), **TOLERANCE)


def test_pooled_is_reference_end_of_text_feature_before_projection(tmp_path, reference, reference_checkpoint):
    """The official Long-CLIP code's `encode_text_full` at end-of-text (before `text_projection`) is Flux's pooled
    vector, for every fixture text without weighting syntax (whose brackets our parser would remove)."""
    FluxPipeline(**tiny_flux_components(long_clip=False, clip_width=128)).save_pretrained(tmp_path / "flux")
    pipeline = LongCLIPFluxPipeline.from_pretrained(tmp_path / "flux", long_clip=reference_checkpoint)
    assert position_embedding(pipeline.text_encoder).num_embeddings == 248
    rows = [row for row, text in enumerate(reference["texts"]) if not any(c in text for c in "()[]\\")]
    texts = [reference["texts"][row] for row in rows]
    _, pooled, _ = encode(pipeline, texts)
    input_ids = reference["input_ids"][rows]
    end_of_text = (input_ids == END_OF_TEXT).int().argmax(dim=-1)
    expected = reference["last_hidden_state"][rows, end_of_text]
    assert len(rows) >= 8 and int(end_of_text.max()) > 200  # covers a prompt read far past 77 tokens
    torch.testing.assert_close(pooled, expected, **TOLERANCE)


def test_words_past_77_change_the_pooled_vector_and_the_image():
    pipeline = make_pipeline()
    first, second = LONG + " with a red boat", LONG + " with a blue castle"
    (t5_first, pooled_first, _), (t5_second, pooled_second, _) = encode(pipeline, first), encode(pipeline, second)
    torch.testing.assert_close(t5_first, t5_second)  # T5 cut both at 32 tokens: only CLIP sees the difference
    assert (pooled_first - pooled_second).abs().max() > 1e-3
    assert (image(pipeline, first) - image(pipeline, second)).abs().max() > 1e-4
    # The same edit is invisible to a 77-token CLIP-L (the stock pipeline).
    stock = FluxPipeline(**dict(pipeline.components, text_encoder=random_text_encoder(clip_text_config()),
                                tokenizer=load_tokenizer(77)))
    torch.testing.assert_close(encode(stock, first)[1], encode(stock, second)[1])


def test_weighting_is_parsed_out_and_weights_t5_as_comfyui():
    pipeline = make_pipeline()
    plain = encode(pipeline, "a red cat in the snow")
    for got, want in zip(encode(pipeline, "a (red:1) cat in (the:1.0) snow"), plain):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    weighted_t5, weighted_pooled, _ = encode(pipeline, "a (red:1.5) cat in the snow")
    torch.testing.assert_close(weighted_pooled, plain[1], rtol=0, atol=0)  # CLIP's pooled vector is not weighted
    # Independent reference: ComfyUI's z_empty + w·(z − z_empty), z_empty the empty prompt at the same length.
    tokenizer, t5 = pipeline.tokenizer_2, pipeline.text_encoder_2
    ids = tokenizer(["a red cat in the snow", ""], padding="max_length", max_length=SEQUENCE, return_tensors="pt")
    with torch.no_grad():
        states = t5(ids.input_ids)[0]
    weights = torch.ones(SEQUENCE)
    weights[tokenizer.convert_ids_to_tokens(ids.input_ids[0]).index("▁red")] = 1.5
    expected = states[1:] + weights[:, None] * (states[:1] - states[1:])
    torch.testing.assert_close(weighted_t5, expected, **TOLERANCE)
    assert (weighted_t5 - plain[0]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Call arguments


def test_batches_images_per_prompt_and_prompt_2():
    pipeline = make_pipeline()
    prompt_embeds, pooled, _ = encode(pipeline, [PROMPT, LONG], num_images_per_prompt=2)
    assert prompt_embeds.shape == (4, SEQUENCE, 32) and pooled.shape == (4, 32)
    alone = encode(pipeline, LONG)
    torch.testing.assert_close(prompt_embeds[2:3], alone[0], **TOLERANCE)
    torch.testing.assert_close(pooled[3:4], alone[1], **TOLERANCE)
    # prompt_2 goes to T5 only.
    with_second = encode(pipeline, PROMPT, prompt_2="a blue bird")
    torch.testing.assert_close(with_second[1], encode(pipeline, PROMPT)[1], **TOLERANCE)
    torch.testing.assert_close(with_second[0], encode(pipeline, "a blue bird")[0], **TOLERANCE)
    images = image(pipeline, [PROMPT, LONG], num_images_per_prompt=2)
    assert images.shape == (4, 3, 16, 16)


def test_prompt_embeds_passed_in_give_the_same_image():
    pipeline = make_pipeline()
    prompt_embeds, pooled, _ = encode(pipeline, LONG)
    torch.testing.assert_close(
        image(pipeline, None, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled), image(pipeline, LONG)
    )


def test_true_cfg_with_negative_prompt():
    pipeline = make_pipeline()
    negative = image(pipeline, LONG, negative_prompt="blurry", true_cfg_scale=2.0)
    assert negative.shape == (1, 3, 16, 16) and (negative - image(pipeline, LONG)).abs().max() > 1e-4


def test_bad_arguments_are_refused_before_denoising():
    pipeline = make_pipeline()
    with pytest.raises(ValueError, match="empty list"):
        encode(pipeline, [])
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        encode(pipeline, PROMPT, num_images_per_prompt=0)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        encode(pipeline, None, prompt_embeds=torch.zeros(1, SEQUENCE, 32), pooled_prompt_embeds=torch.zeros(32))
    with pytest.raises(ValueError, match="NaN"):
        pipeline(None, prompt_embeds=torch.full((1, SEQUENCE, 32), float("nan")), pooled_prompt_embeds=torch.zeros(1, 32),
                 height=16, width=16, num_inference_steps=1)


# --------------------------------------------------------------------------------------------------------------------
# Loading, swapping, saving


def test_apply_long_clip_on_img2img_inpaint_and_kontext(tmp_path):
    long_encoder = random_text_encoder(clip_text_config(), seed=7, long=True)
    save_comfy_file(long_encoder, tmp_path / "longclip-L.safetensors")
    reference = make_pipeline(text_encoder=copy.deepcopy(long_encoder))
    stock_components = tiny_flux_components(long_clip=False)
    init = torch.rand(1, 3, 16, 16)
    for pipeline_class, extra in (
        (FluxImg2ImgPipeline, {"image": init, "strength": 0.8}),
        (FluxInpaintPipeline, {"image": init, "mask_image": torch.ones(1, 1, 16, 16), "strength": 0.8}),
        (FluxKontextPipeline, {"image": init, "max_area": 16 * 16, "_auto_resize": False}),
    ):
        pipeline = pipeline_class(**copy.deepcopy(stock_components))
        pipeline.set_progress_bar_config(disable=True)
        assert apply_long_clip(pipeline, tmp_path / "longclip-L.safetensors") is pipeline
        assert position_embedding(pipeline.text_encoder).num_embeddings == 248
        for got, want in zip(encode(pipeline, LONG), encode(reference, LONG)):
            torch.testing.assert_close(got, want, **TOLERANCE)
        generator = torch.Generator().manual_seed(0)
        output = pipeline(prompt=LONG, height=16, width=16, num_inference_steps=2, generator=generator, output_type="pt",
                          max_sequence_length=SEQUENCE, **extra).images
        assert output.shape == (1, 3, 16, 16) and torch.isfinite(output).all()


def test_apply_long_clip_stretch_and_failures_leave_the_pipeline_as_it_was(tmp_path):
    pipeline = FluxPipeline(**tiny_flux_components(long_clip=False))
    original = pipeline.text_encoder
    with pytest.raises(CheckpointError, match="no such file"):
        apply_long_clip(pipeline, tmp_path / "missing.safetensors")
    wide = random_text_encoder(clip_text_config(hidden_size=48, projection_dim=48), long=True)
    with pytest.raises(CheckpointError, match="48 wide"):
        apply_long_clip(pipeline, wide)
    with pytest.raises(ValueError, match="bigg"):
        apply_long_clip(pipeline, "stretch", bigg="windows")
    assert pipeline.text_encoder is original and position_embedding(original).num_embeddings == 77

    apply_long_clip(pipeline, "stretch")
    assert pipeline.text_encoder is original and position_embedding(original).num_embeddings == 248
    assert encode(pipeline, LONG)[1].shape == (1, 32)
    with pytest.raises(ValueError, match="already reads 248"):
        apply_long_clip(pipeline, "stretch")
    assert position_embedding(pipeline.text_encoder).num_embeddings == 248


def test_save_load_round_trip_also_in_stock_diffusers(tmp_path):
    pipeline = make_pipeline()
    pipeline.save_pretrained(tmp_path / "saved")
    loaded = LongCLIPFluxPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(image(loaded, LONG), image(pipeline, LONG), **TOLERANCE)
    stock = FluxPipeline.from_pretrained(tmp_path / "saved")
    assert stock.tokenizer_max_length == 248
    for got, want in zip(encode(stock, LONG), encode(pipeline, LONG)):
        torch.testing.assert_close(got, want, **TOLERANCE)


def test_from_pretrained_stock_base_with_file_model_or_stretch(tmp_path):
    FluxPipeline(**tiny_flux_components(long_clip=False)).save_pretrained(tmp_path / "base")
    long_encoder = random_text_encoder(clip_text_config(), seed=3, long=True)
    save_comfy_file(long_encoder, tmp_path / "longclip.safetensors")
    from_file = LongCLIPFluxPipeline.from_pretrained(tmp_path / "base", long_clip=tmp_path / "longclip.safetensors")
    from_model = LongCLIPFluxPipeline.from_pretrained(tmp_path / "base", long_clip=long_encoder, dtype=torch.float32)
    torch.testing.assert_close(encode(from_file, LONG)[1], encode(from_model, LONG)[1], **TOLERANCE)
    stretched = LongCLIPFluxPipeline.from_pretrained(tmp_path / "base", long_clip="stretch")
    assert position_embedding(stretched.text_encoder).num_embeddings == 248
    assert stretched.tokenizer_max_length == 248


def test_lora_through_diffusers_loader(tmp_path):
    """A text-encoder LoRA (made on a stock 77-position CLIP-L) loaded with `load_lora_weights` acts on Long-CLIP-L as
    the same deltas merged by hand."""
    pytest.importorskip("peft")
    pipeline = make_pipeline()
    lora = trained_lora(random_text_encoder(clip_text_config()), ["q_proj", "v_proj"], seed=1)
    reference = copy.deepcopy(pipeline)
    merge_lora_by_hand(reference.text_encoder, lora)
    before = encode(pipeline, LONG)[1]
    LongCLIPFluxPipeline.save_lora_weights(tmp_path, text_encoder_lora_layers=lora, transformer_lora_layers=None)
    pipeline.load_lora_weights(tmp_path / "pytorch_lora_weights.safetensors")
    after = encode(pipeline, LONG)[1]
    torch.testing.assert_close(after, encode(reference, LONG)[1], rtol=1e-4, atol=1e-5)
    assert (after - before).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_generate_family_flux(tmp_path, capsys):
    from PIL import Image

    from longclip_diffusion.cli import main

    FluxPipeline(**tiny_flux_components(long_clip=False)).save_pretrained(tmp_path / "tiny-flux")
    save_comfy_file(random_text_encoder(clip_text_config(), seed=4, long=True), tmp_path / "longclip.safetensors")
    output = tmp_path / "flux.png"
    args = ["generate", LONG, "--family", "flux", "--steps", "2", "--height", "16", "--width", "16",
            "--base", str(tmp_path / "tiny-flux"), "--long-clip", str(tmp_path / "longclip.safetensors"),
            "--device", "cpu", "-o", str(output)]
    assert main(args) == 0
    assert np.asarray(Image.open(output)).shape == (16, 16, 3)
    assert "Flux" in capsys.readouterr().out
    # Detected from model_index.json without --family, and the same seed gives the same image.
    assert main([arg for arg in args if arg not in ("--family", "flux")][:-1] + [str(tmp_path / "again.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(output)))
    assert load_text_encoder(tmp_path / "longclip.safetensors").config.max_position_embeddings == 248


def test_apply_long_clip_on_controlnet():
    from diffusers import FluxControlNetModel, FluxControlNetPipeline

    components = tiny_flux_components(long_clip=False)
    torch.manual_seed(0)
    controlnet = FluxControlNetModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                     pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    pipeline = FluxControlNetPipeline(**copy.deepcopy(components), controlnet=controlnet)
    pipeline.set_progress_bar_config(disable=True)
    reference = LongCLIPFluxPipeline(**components)
    apply_long_clip(pipeline, "stretch")
    apply_long_clip(reference, "stretch")
    for got, want in zip(encode(pipeline, LONG), encode(reference, LONG)):
        torch.testing.assert_close(got, want, **TOLERANCE)
    output = pipeline(prompt=LONG, control_image=torch.rand(1, 3, 16, 16), height=16, width=16, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(0), output_type="pt", max_sequence_length=SEQUENCE).images
    assert output.shape == (1, 3, 16, 16) and torch.isfinite(output).all()
