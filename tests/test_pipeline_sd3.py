"""LongCLIPStableDiffusion3Pipeline and apply_long_clip on SD3 pipelines, with tiny random components built in code
(T5 and its tokenizer too: the Hub is never asked)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline

from longclip_diffusion.checkpoints import CheckpointError, save_comfy_file
from longclip_diffusion.pipelines import LongCLIPStableDiffusion3Pipeline, apply_long_clip
from longclip_diffusion.pipelines.core import get_setting
from longclip_diffusion.positions import position_embedding, stretch_text_encoder
from longclip_diffusion.testing import (
    clip_text_config,
    merge_lora_by_hand,
    random_text_encoder,
    sdxl_tokenizer_2,
    trained_lora,
)
from longclip_diffusion.testing_mmdit import tiny_sd3_components
from longclip_diffusion.tokenizer import END_OF_TEXT, START_OF_TEXT, load_tokenizer, token_ids

TOLERANCE = dict(rtol=0, atol=1e-5)
WIDTH_L, WIDTH_G, WIDTH_T5 = 16, 32, 64
SEQUENCE = 32  # T5 max_sequence_length for the tiny runs
PROMPT = "a painting of a squirrel eating a burger"
LONG = " ".join(f"word{i % 10} tree" for i in range(60))  # 120 CLIP tokens, well past 77


def make_pipeline(bigg="stretch", **overrides) -> LongCLIPStableDiffusion3Pipeline:
    components = tiny_sd3_components(long_clip=True)
    components.update(overrides)
    pipeline = LongCLIPStableDiffusion3Pipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return apply_long_clip(pipeline, None, bigg=bigg)


@torch.no_grad()
def encode(pipeline, prompt, **kwargs):
    kwargs.setdefault("max_sequence_length", SEQUENCE)
    kwargs.setdefault("device", torch.device("cpu"))
    kwargs.setdefault("prompt_2", None)
    kwargs.setdefault("prompt_3", None)
    return pipeline.encode_prompt(prompt, **kwargs)


def image(pipeline, prompt=LONG, **kwargs) -> torch.Tensor:
    kwargs.setdefault("max_sequence_length", SEQUENCE)
    generator = torch.Generator().manual_seed(0)
    return pipeline(prompt, height=16, width=16, num_inference_steps=2, generator=generator, output_type="pt",
                    **kwargs).images


def stock_with_same_components(pipeline, pad_token: str) -> StableDiffusion3Pipeline:
    """Stock diffusers SD3 with our long encoders and 248-token tokenizers padding as ours: CLIP-L with ``pad_token``,
    bigG with "!" (id 0), as SD3's tokenizer_2 does."""
    tokenizer = load_tokenizer(248) if pad_token == "<|endoftext|>" else sdxl_tokenizer_2(248)
    stock = StableDiffusion3Pipeline(**dict(pipeline.components, tokenizer=tokenizer, tokenizer_2=sdxl_tokenizer_2(248)))
    stock.set_progress_bar_config(disable=True)
    assert stock.tokenizer_max_length == 248
    return stock


# --------------------------------------------------------------------------------------------------------------------
# Fidelity


@pytest.mark.parametrize("long_clip", ["fine-tuned", "stretch"])
def test_equals_stock_sd3_given_the_same_long_encoders(long_clip):
    if long_clip == "stretch":  # SD3's own CLIP-L stretched: padded with end-of-text, as SD3 pads it
        pipeline = LongCLIPStableDiffusion3Pipeline(**tiny_sd3_components(long_clip=False))
        apply_long_clip(pipeline, "stretch")
        assert get_setting(pipeline, "long_clip_pad_token_id", None) == END_OF_TEXT
        stock = stock_with_same_components(pipeline, "<|endoftext|>")
    else:  # a fine-tuned Long-CLIP-L: padded with 0, as trained
        pipeline = make_pipeline()
        stock = stock_with_same_components(pipeline, "!")
    pipeline.set_progress_bar_config(disable=True)
    arguments = dict(negative_prompt=["blurry", "lowres"], clip_skip=1)
    ours, stocks = encode(pipeline, [PROMPT, LONG], **arguments), encode(stock, [PROMPT, LONG], **arguments)
    assert ours[0].shape == (2, 248 + SEQUENCE, WIDTH_T5) and ours[2].shape == (2, WIDTH_L + WIDTH_G)
    for got, want in zip(ours, stocks):
        torch.testing.assert_close(got, want, **TOLERANCE)
    torch.testing.assert_close(image(pipeline, negative_prompt="blurry"), image(stock, negative_prompt="blurry"), **TOLERANCE)


def test_joint_sequence_layout_and_pooled_from_both_encoders():
    """CLIP-L ⊕ bigG penultimate states on the width axis, zero-padded to T5's width, then T5; pooled = both projected
    end-of-text features — each checked against the encoders called directly."""
    pipeline = make_pipeline()
    prompt_embeds, _, pooled, _ = encode(pipeline, PROMPT, do_classifier_free_guidance=False)
    ids = [START_OF_TEXT, *token_ids([PROMPT])[0], END_OF_TEXT]
    with torch.no_grad():
        output_l = pipeline.text_encoder(torch.tensor([ids + [0] * (248 - len(ids))]), output_hidden_states=True)
        output_g = pipeline.text_encoder_2(torch.tensor([ids + [0] * (248 - len(ids))]), output_hidden_states=True)
        t5_ids = pipeline.tokenizer_3(PROMPT, padding="max_length", max_length=SEQUENCE, return_tensors="pt").input_ids
        t5 = pipeline.text_encoder_3(t5_ids)[0]
    torch.testing.assert_close(prompt_embeds[:, :248, :WIDTH_L], output_l.hidden_states[-2], **TOLERANCE)
    torch.testing.assert_close(prompt_embeds[:, :248, WIDTH_L : WIDTH_L + WIDTH_G], output_g.hidden_states[-2], **TOLERANCE)
    assert prompt_embeds[:, :248, WIDTH_L + WIDTH_G :].abs().max() == 0
    torch.testing.assert_close(prompt_embeds[:, 248:], t5, **TOLERANCE)
    torch.testing.assert_close(pooled, torch.cat([output_l.text_embeds, output_g.text_embeds], dim=-1), **TOLERANCE)


@pytest.mark.parametrize("bigg", ["stretch", "windows"])
def test_words_past_77_change_the_clip_sequence_the_pooled_vector_and_the_image(bigg):
    pipeline = make_pipeline(bigg)
    first, second = LONG + " with a red boat", LONG + " with a blue castle"
    (embeds_first, _, pooled_first, _), (embeds_second, _, pooled_second, _) = (
        encode(pipeline, first, do_classifier_free_guidance=False),
        encode(pipeline, second, do_classifier_free_guidance=False),
    )
    torch.testing.assert_close(embeds_first[:, 248:], embeds_second[:, 248:])  # T5 cut both at 32 tokens
    edit = len(token_ids([LONG])[0]) + 3  # "red"/"blue", past token 77 (position 0 is start-of-text)
    assert edit > 150
    torch.testing.assert_close(embeds_first[:, :edit], embeds_second[:, :edit])
    assert (embeds_first[:, edit, :WIDTH_L] - embeds_second[:, edit, :WIDTH_L]).abs().max() > 1e-3
    assert (embeds_first[:, edit, WIDTH_L:] - embeds_second[:, edit, WIDTH_L:]).abs().max() > 1e-3
    assert (pooled_first[:, :WIDTH_L] - pooled_second[:, :WIDTH_L]).abs().max() > 1e-3
    if bigg == "windows":  # bigG's pooled vector comes from the first window only
        torch.testing.assert_close(pooled_first[:, WIDTH_L:], pooled_second[:, WIDTH_L:])
        assert position_embedding(pipeline.text_encoder_2).num_embeddings == 77
    assert (image(pipeline, first) - image(pipeline, second)).abs().max() > 1e-4


def test_weighting_is_parsed_out_of_all_three_encoders():
    pipeline = make_pipeline()
    plain = encode(pipeline, "a red cat in the snow", negative_prompt="blurry")
    for got, want in zip(encode(pipeline, "a (red:1) cat in the snow", negative_prompt="(blurry:1.0)"), plain):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    weighted, _, pooled, _ = encode(pipeline, "a (red:1.5) cat in the snow", negative_prompt="blurry")
    torch.testing.assert_close(pooled, plain[2], **TOLERANCE)  # pooled vectors are not weighted
    assert (weighted[:, 2, : WIDTH_L + WIDTH_G] - plain[0][:, 2, : WIDTH_L + WIDTH_G]).abs().max() > 1e-3  # "red"
    torch.testing.assert_close(weighted[:, 5:248], plain[0][:, 5:248])  # causal CLIP: tokens after "red" untouched…
    assert (weighted[:, 248:] - plain[0][:, 248:]).abs().max() > 1e-3  # …while T5 (bidirectional) is weighted too


# --------------------------------------------------------------------------------------------------------------------
# Call arguments


def test_negative_prompts_batches_and_images_per_prompt():
    pipeline = make_pipeline()
    prompt_embeds, negative_embeds, pooled, negative_pooled = encode(
        pipeline, [PROMPT, LONG], negative_prompt=["blurry", "lowres"], num_images_per_prompt=2
    )
    assert prompt_embeds.shape == negative_embeds.shape == (4, 248 + SEQUENCE, WIDTH_T5)
    assert pooled.shape == negative_pooled.shape == (4, WIDTH_L + WIDTH_G)
    alone = encode(pipeline, LONG, negative_prompt="lowres")
    torch.testing.assert_close(prompt_embeds[2:3], alone[0], **TOLERANCE)
    torch.testing.assert_close(negative_embeds[3:4], alone[1], **TOLERANCE)
    # negative_prompt_2 / _3 go to bigG / T5 only; the default negative prompt is "".
    split = encode(pipeline, PROMPT, negative_prompt="blurry", negative_prompt_2="fog", negative_prompt_3="rain")
    torch.testing.assert_close(split[1][:, :248, :WIDTH_L], encode(pipeline, PROMPT, negative_prompt="blurry")[1][:, :248, :WIDTH_L])
    torch.testing.assert_close(split[1][:, :248, WIDTH_L:], encode(pipeline, PROMPT, negative_prompt="fog")[1][:, :248, WIDTH_L:])
    torch.testing.assert_close(split[1][:, 248:], encode(pipeline, PROMPT, negative_prompt="rain")[1][:, 248:])
    torch.testing.assert_close(encode(pipeline, PROMPT)[1], encode(pipeline, PROMPT, negative_prompt="")[1])
    assert image(pipeline, [PROMPT, LONG], num_images_per_prompt=2).shape == (4, 3, 16, 16)


def test_prompt_embeds_passed_in_give_the_same_image():
    pipeline = make_pipeline()
    prompt_embeds, negative_embeds, pooled, negative_pooled = encode(pipeline, LONG, negative_prompt="blurry")
    passed = image(pipeline, None, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                   pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
    torch.testing.assert_close(passed, image(pipeline, negative_prompt="blurry"))


def test_without_t5_the_t5_part_is_zeros():
    pipeline = make_pipeline(text_encoder_3=None, tokenizer_3=None)
    prompt_embeds, _, _, _ = encode(pipeline, LONG)
    assert prompt_embeds.shape == (1, 248 + SEQUENCE, WIDTH_T5) and prompt_embeds[:, 248:].abs().max() == 0
    assert image(pipeline).shape == (1, 3, 16, 16)


def test_clip_pair_wider_than_t5_is_refused():
    pipeline = make_pipeline()
    pipeline.text_encoder_3 = pipeline.text_encoder_3.__class__(
        pipeline.text_encoder_3.config.__class__(**{**pipeline.text_encoder_3.config.to_dict(), "d_model": 40})
    )
    with pytest.raises(ValueError, match="more than T5's 40"):
        encode(pipeline, PROMPT)


# --------------------------------------------------------------------------------------------------------------------
# Loading, swapping, saving


def test_apply_long_clip_on_img2img_and_inpaint(tmp_path):
    long_encoder = random_text_encoder(clip_text_config(hidden_size=WIDTH_L, num_attention_heads=2,
                                                        projection_dim=WIDTH_L), with_projection=True, seed=7, long=True)
    save_comfy_file(long_encoder, tmp_path / "longclip-L.safetensors")
    stock_components = tiny_sd3_components(long_clip=False)
    reference = make_pipeline(**dict(copy.deepcopy(stock_components), text_encoder=copy.deepcopy(long_encoder),
                                     tokenizer=load_tokenizer(248)))
    init = torch.rand(1, 3, 16, 16)
    for pipeline_class, extra in (
        (StableDiffusion3Img2ImgPipeline, {"image": init, "strength": 0.8}),
        (StableDiffusion3InpaintPipeline, {"image": init, "mask_image": torch.ones(1, 1, 16, 16), "strength": 0.8}),
    ):
        pipeline = pipeline_class(**copy.deepcopy(stock_components))
        pipeline.set_progress_bar_config(disable=True)
        assert apply_long_clip(pipeline, tmp_path / "longclip-L.safetensors") is pipeline
        assert position_embedding(pipeline.text_encoder_2).num_embeddings == 248  # bigG stretched by default
        for got, want in zip(encode(pipeline, LONG, negative_prompt="blurry"), encode(reference, LONG, negative_prompt="blurry")):
            torch.testing.assert_close(got, want, **TOLERANCE)
        generator = torch.Generator().manual_seed(0)
        output = pipeline(prompt=LONG, height=16, width=16, num_inference_steps=2, generator=generator,
                          output_type="pt", max_sequence_length=SEQUENCE, **extra).images
        assert output.shape == (1, 3, 16, 16) and torch.isfinite(output).all()

    windows = StableDiffusion3Img2ImgPipeline(**copy.deepcopy(stock_components))
    apply_long_clip(windows, "stretch", bigg="windows")
    assert position_embedding(windows.text_encoder_2).num_embeddings == 77
    assert encode(windows, LONG)[0].shape == (1, 248 + SEQUENCE, WIDTH_T5)


def test_supplied_bigg_and_failures_leave_the_pipeline_as_it_was(tmp_path):
    pipeline = StableDiffusion3Pipeline(**tiny_sd3_components(long_clip=False))
    original_l, original_g = pipeline.text_encoder, pipeline.text_encoder_2
    with pytest.raises(CheckpointError, match="no such file"):
        apply_long_clip(pipeline, tmp_path / "missing.safetensors")
    wide = random_text_encoder(clip_text_config(hidden_size=48, projection_dim=48), with_projection=True, long=True)
    with pytest.raises(CheckpointError, match="48 wide"):
        apply_long_clip(pipeline, wide)
    with pytest.raises(ValueError, match="bigg"):
        apply_long_clip(pipeline, "stretch", bigg="stretched")
    long_l = random_text_encoder(clip_text_config(hidden_size=WIDTH_L, num_attention_heads=2, projection_dim=WIDTH_L),
                                 with_projection=True, long=True)
    with pytest.raises(CheckpointError, match="48 wide"):  # CLIP-L fine, bigG wrong: neither is swapped
        apply_long_clip(pipeline, long_l, bigg=wide)
    with pytest.raises(CheckpointError, match="48 wide"):
        apply_long_clip(pipeline, "stretch", bigg=wide)
    assert pipeline.text_encoder is original_l and pipeline.text_encoder_2 is original_g
    assert position_embedding(original_l).num_embeddings == 77 and position_embedding(original_g).num_embeddings == 77

    long_bigg = copy.deepcopy(original_g)
    stretch_text_encoder(long_bigg)
    apply_long_clip(pipeline, "stretch", bigg=long_bigg)
    assert get_setting(pipeline, "long_clip_bigg_mode", None) == "supplied"
    assert position_embedding(pipeline.text_encoder_2).num_embeddings == 248
    assert encode(pipeline, LONG)[0].shape == (1, 248 + SEQUENCE, WIDTH_T5)
    with pytest.raises(ValueError, match="already reads 248"):
        apply_long_clip(pipeline, "stretch")


def test_save_load_round_trip_also_in_stock_diffusers(tmp_path):
    pipeline = make_pipeline()
    pipeline.save_pretrained(tmp_path / "saved")
    loaded = LongCLIPStableDiffusion3Pipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.long_clip_bigg_mode == "stretch"
    torch.testing.assert_close(image(loaded, negative_prompt="blurry"), image(pipeline, negative_prompt="blurry"), **TOLERANCE)
    stock = StableDiffusion3Pipeline.from_pretrained(tmp_path / "saved")
    for got, want in zip(encode(stock, LONG, negative_prompt="blurry"), encode(pipeline, LONG, negative_prompt="blurry")):
        torch.testing.assert_close(got, want, **TOLERANCE)


def test_from_pretrained_stock_base(tmp_path):
    StableDiffusion3Pipeline(**tiny_sd3_components(long_clip=False)).save_pretrained(tmp_path / "base")
    long_encoder = random_text_encoder(clip_text_config(hidden_size=WIDTH_L, num_attention_heads=2,
                                                        projection_dim=WIDTH_L), with_projection=True, seed=3, long=True)
    save_comfy_file(long_encoder, tmp_path / "longclip.safetensors")
    from_file = LongCLIPStableDiffusion3Pipeline.from_pretrained(tmp_path / "base", long_clip=tmp_path / "longclip.safetensors")
    assert from_file.config.long_clip_pad_token_id == 0 and from_file.tokenizer_max_length == 248
    windows = LongCLIPStableDiffusion3Pipeline.from_pretrained(tmp_path / "base", long_clip="stretch", bigg="windows")
    assert windows.config.long_clip_bigg_mode == "windows" and windows.config.long_clip_pad_token_id == END_OF_TEXT
    for pipeline in (from_file, windows):
        assert encode(pipeline, LONG)[0].shape == (1, 248 + SEQUENCE, WIDTH_T5)


def test_lora_through_diffusers_loader(tmp_path):
    """A CLIP-L LoRA loaded with `load_lora_weights` acts on Long-CLIP-L as the same deltas merged by hand."""
    pytest.importorskip("peft")
    pipeline = make_pipeline()
    lora = trained_lora(pipeline.text_encoder, ["q_proj", "v_proj"], seed=1)
    reference = copy.deepcopy(pipeline)
    merge_lora_by_hand(reference.text_encoder, lora)
    before = encode(pipeline, LONG)[2]
    LongCLIPStableDiffusion3Pipeline.save_lora_weights(tmp_path, text_encoder_lora_layers=lora, transformer_lora_layers=None)
    pipeline.load_lora_weights(tmp_path / "pytorch_lora_weights.safetensors")
    after = encode(pipeline, LONG)
    for got, want in zip(after, encode(reference, LONG)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (after[2] - before).abs().max() > 1e-3


def test_clip_l_pooled_is_reference_projected_end_of_text_feature(tmp_path, reference, reference_checkpoint):
    """SD3's pooled vector starts with Long-CLIP-L's projected end-of-text feature: the official code's `encode_text`,
    read from the official file format, for every fixture text without weighting syntax."""
    components = tiny_sd3_components(long_clip=False, clip_l_width=128, clip_l_projection=64, t5_width=192)
    StableDiffusion3Pipeline(**components).save_pretrained(tmp_path / "sd3")
    pipeline = LongCLIPStableDiffusion3Pipeline.from_pretrained(tmp_path / "sd3", long_clip=reference_checkpoint)
    rows = [row for row, text in enumerate(reference["texts"]) if not any(c in text for c in "()[]\\")]
    _, _, pooled, _ = encode(pipeline, [reference["texts"][row] for row in rows], do_classifier_free_guidance=False)
    assert pooled.shape == (len(rows), 64 + WIDTH_G)
    torch.testing.assert_close(pooled[:, :64], reference["text_embeds"][rows], **TOLERANCE)


def test_cli_generate_family_sd3(tmp_path):
    import numpy as np
    from PIL import Image

    from longclip_diffusion.cli import main

    StableDiffusion3Pipeline(**tiny_sd3_components(long_clip=False)).save_pretrained(tmp_path / "tiny-sd3")
    output = tmp_path / "sd3.png"
    args = ["generate", LONG, "-n", "blurry", "--family", "sd3", "--steps", "2", "--height", "16", "--width", "16",
            "--base", str(tmp_path / "tiny-sd3"), "--long-clip", "stretch", "--device", "cpu", "-o", str(output)]
    assert main(args) == 0
    assert np.asarray(Image.open(output)).shape == (16, 16, 3)


def test_apply_long_clip_on_controlnet():
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    components = tiny_sd3_components(long_clip=False)
    torch.manual_seed(0)
    controlnet = SD3ControlNetModel(sample_size=32, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8,
                                    num_attention_heads=4, joint_attention_dim=WIDTH_T5, caption_projection_dim=32,
                                    pooled_projection_dim=WIDTH_L + WIDTH_G, out_channels=16)
    pipeline = StableDiffusion3ControlNetPipeline(**copy.deepcopy(components), controlnet=controlnet)
    pipeline.set_progress_bar_config(disable=True)
    reference = LongCLIPStableDiffusion3Pipeline(**components)
    apply_long_clip(pipeline, "stretch")
    apply_long_clip(reference, "stretch")
    for got, want in zip(encode(pipeline, LONG, negative_prompt="blurry"), encode(reference, LONG, negative_prompt="blurry")):
        torch.testing.assert_close(got, want, **TOLERANCE)
    output = pipeline(prompt=LONG, control_image=torch.rand(1, 3, 16, 16), height=16, width=16, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(0), output_type="pt", max_sequence_length=SEQUENCE).images
    assert output.shape == (1, 3, 16, 16) and torch.isfinite(output).all()
