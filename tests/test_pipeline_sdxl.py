"""LongCLIPStableDiffusionXLPipeline and apply_long_clip on SDXL pipelines, with tiny random components built in code."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from longclip_diffusion.checkpoints import save_comfy_file
from longclip_diffusion.pipelines import LongCLIPStableDiffusionXLPipeline, apply_long_clip, encode_windows
from longclip_diffusion.pipelines.core import get_setting, text_tokenizer
from longclip_diffusion.positions import stretch_text_encoder
from longclip_diffusion.prompts import tokenize_prompt
from longclip_diffusion.testing import tiny_sd_components, tiny_sdxl_components
from longclip_diffusion.tokenizer import END_OF_TEXT, START_OF_TEXT, load_tokenizer, token_ids

WIDTH_L, WIDTH_G = 16, 32
SHORT = "a red fox in the snow"  # 6 tokens
LONG = " ".join(f"word{i % 10} tree" for i in range(60))  # well past 77 tokens


def make_pipeline(bigg="stretch", hidden_state=None, **overrides) -> LongCLIPStableDiffusionXLPipeline:
    components = tiny_sdxl_components(long_clip=True)
    components.update(overrides)
    pipeline = LongCLIPStableDiffusionXLPipeline(**components)
    return apply_long_clip(pipeline, None, bigg=bigg, hidden_state=hidden_state)


def ids_of(text: str) -> list[int]:
    return token_ids([text])[0]


def bigg_states(bigg, ids: list[int], length: int, layer: int = -2) -> torch.Tensor:
    """Stock SDXL reading of ``[start, ids, end, 0…]``: one hidden layer of bigG (no final norm)."""
    row = [START_OF_TEXT, *ids, END_OF_TEXT] + [0] * (length - len(ids) - 2)
    with torch.no_grad():
        output = bigg(torch.tensor([row]), output_hidden_states=True)
    return output.hidden_states[layer][0], output.text_embeds[0]


@torch.no_grad()
def encode(pipeline, prompt, **kwargs):
    kwargs.setdefault("device", torch.device("cpu"))
    return pipeline.encode_prompt(prompt, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize("bigg", ["stretch", "windows"])
def test_tokens_past_77_change_both_encoders(bigg):
    pipeline = make_pipeline(bigg)
    base = " ".join(["mountain lake"] * 45)  # 90 tokens
    first, _, pooled_first, _ = encode(pipeline, base + " with a red boat", do_classifier_free_guidance=False)
    second, _, pooled_second, _ = encode(pipeline, base + " with a blue castle", do_classifier_free_guidance=False)
    assert first.shape == (1, 248, WIDTH_L + WIDTH_G)
    assert len(ids_of(base)) == 90
    # Positions up to the 90th token are read identically (causal attention); the edit at token 91+ shows up in both.
    torch.testing.assert_close(first[:, :91], second[:, :91])
    assert (first[:, 91:95, :WIDTH_L] - second[:, 91:95, :WIDTH_L]).abs().max() > 1e-3
    assert (first[:, 91:95, WIDTH_L:] - second[:, 91:95, WIDTH_L:]).abs().max() > 1e-3
    if bigg == "stretch":  # the end-of-text token reads the whole prompt
        assert (pooled_first - pooled_second).abs().max() > 1e-4
    else:  # documented: pooled from the first 75-token window only
        torch.testing.assert_close(pooled_first, pooled_second)


CABIN = "a small wooden cabin beside a frozen lake under northern lights with pine trees and fresh snow"


@pytest.mark.parametrize(
    "hidden_state, layer, prompt",
    [("penultimate", -2, CABIN), ("final_norm", None, CABIN), ("penultimate", -2, " ".join(["birch"] * 20))],
)
def test_stretch_short_prompt_equals_unstretched_bigg(hidden_state, layer, prompt):
    components = tiny_sdxl_components(long_clip=True)
    stock_bigg = copy.deepcopy(components["text_encoder_2"])
    pipeline = apply_long_clip(LongCLIPStableDiffusionXLPipeline(**components), None, hidden_state=hidden_state)
    assert pipeline.text_encoder_2.config.max_position_embeddings == 248

    ids = ids_of(prompt)
    assert len(ids) <= 20
    embeds, _, pooled, _ = encode(pipeline, prompt, do_classifier_free_guidance=False)
    with torch.no_grad():
        row = torch.tensor([[START_OF_TEXT, *ids, END_OF_TEXT] + [0] * (75 - len(ids))])
        output = stock_bigg(row, output_hidden_states=True)
    expected = output.hidden_states[layer][0] if layer else output.last_hidden_state[0]
    positions = len(ids) + 2 if len(ids) < 20 else 21  # KPS keeps rows 0–20: start, tokens (and end if it fits)
    torch.testing.assert_close(embeds[0, :positions, WIDTH_L:], expected[:positions])
    if len(ids) < 20:
        torch.testing.assert_close(pooled[0], output.text_embeds[0])
    # Past the kept rows the stretched table differs: the padding positions are not stock's.
    assert (embeds[0, 30:77, WIDTH_L:] - expected[30:77]).abs().max() > 1e-4


def test_windows_mode_layout_and_pooled():
    components = tiny_sdxl_components(long_clip=True)
    stock_bigg = copy.deepcopy(components["text_encoder_2"])
    pipeline = apply_long_clip(LongCLIPStableDiffusionXLPipeline(**components), None, bigg="windows")
    assert pipeline.text_encoder_2.config.max_position_embeddings == 77  # windows keep bigG as shipped

    # ≤ 75 tokens: exactly stock SDXL's bigG on positions 0–76, then the last slot repeated, pooled as stock.
    embeds, _, pooled, _ = encode(pipeline, SHORT, do_classifier_free_guidance=False)
    expected, expected_pooled = bigg_states(stock_bigg, ids_of(SHORT), 77)
    torch.testing.assert_close(embeds[0, :77, WIDTH_L:], expected)
    torch.testing.assert_close(embeds[0, 77:, WIDTH_L:], expected[76].expand(171, -1))
    torch.testing.assert_close(pooled[0], expected_pooled)

    # 100 tokens: window 0 holds tokens 1–75, window 1 tokens 76–100 at slots 1–25, its end and pads after.
    prompt = " ".join(["stone bridge"] * 50)
    ids = ids_of(prompt)
    assert len(ids) == 100
    embeds, _, pooled, _ = encode(pipeline, prompt, do_classifier_free_guidance=False)
    window_0, pooled_0 = bigg_states(stock_bigg, ids[:75], 77)
    window_1, _ = bigg_states(stock_bigg, ids[75:], 77)
    torch.testing.assert_close(embeds[0, :76, WIDTH_L:], window_0[:76])  # start + tokens 1–75
    torch.testing.assert_close(embeds[0, 76:152, WIDTH_L:], window_1[1:77])  # tokens 76–100, end, its 50 pads
    torch.testing.assert_close(embeds[0, 152:, WIDTH_L:], window_1[76].expand(96, -1))
    torch.testing.assert_close(pooled[0], pooled_0)


def test_windows_weighting_is_per_window_as_comfyui():
    """A weighted token in the second window is weighted around the empty *window* at its slot (ComfyUI core's
    encode_token_weights per 77-token chunk), not around the laid-out empty prompt at its 248-position index."""
    components = tiny_sdxl_components(long_clip=True)
    stock_bigg = copy.deepcopy(components["text_encoder_2"])
    pipeline = apply_long_clip(LongCLIPStableDiffusionXLPipeline(**components), None, bigg="windows")
    prompt = " ".join(["stone bridge"] * 40) + " (stone bridge:1.5) " + " ".join(["stone bridge"] * 9)
    embeds = encode(pipeline, prompt, do_classifier_free_guidance=False)[0][0, :, WIDTH_L:]
    ids = ids_of(prompt.replace("(", "").replace(":1.5)", ""))
    window_1, _ = bigg_states(stock_bigg, ids[75:], 77)
    empty_window, _ = bigg_states(stock_bigg, [], 77)
    # Tokens 81 and 82 sit in window 1 at slots 6 and 7.
    torch.testing.assert_close(embeds[81:83], empty_window[6:8] + 1.5 * (window_1[6:8] - empty_window[6:8]))
    torch.testing.assert_close(embeds[76:81], window_1[1:6])
    torch.testing.assert_close(embeds[83:102], window_1[8:27])


def test_encode_windows_full_window_and_empty_prompt():
    bigg = tiny_sdxl_components()["text_encoder_2"]
    tokenizer = load_tokenizer()
    prompt = " ".join(["glass"] * 75)  # exactly one full window: end at slot 76, no pad slots
    encoding = encode_windows(bigg, tokenizer, [prompt, ""], device="cpu")
    full, _ = bigg_states(bigg, [ids_of("glass")[0]] * 75, 77)
    empty, empty_pooled = bigg_states(bigg, [], 77)
    assert encoding.hidden_states.shape == (2, 248, WIDTH_G)
    torch.testing.assert_close(encoding.hidden_states[0, :77], full)
    torch.testing.assert_close(encoding.hidden_states[0, 77:], full[76].expand(171, -1))
    torch.testing.assert_close(encoding.hidden_states[1, :77], empty)
    torch.testing.assert_close(encoding.pooled[1], empty_pooled)


@pytest.mark.parametrize("bigg", ["stretch", "windows"])
def test_negative_and_positive_embeddings_have_equal_shapes(bigg):
    pipeline = make_pipeline(bigg)
    for prompt, negative in [(SHORT, LONG), (LONG, SHORT), ("", LONG), (LONG, "")]:
        embeds, negative_embeds, pooled, negative_pooled = encode(pipeline, prompt, negative_prompt=negative)
        assert embeds.shape == negative_embeds.shape == (1, 248, WIDTH_L + WIDTH_G)
        assert pooled.shape == negative_pooled.shape == (1, WIDTH_G)
        assert not torch.equal(embeds, negative_embeds)


def test_force_zeros_for_empty_prompt_and_negative_prompt_2():
    pipeline = make_pipeline()
    assert pipeline.config.force_zeros_for_empty_prompt
    embeds, negative, pooled, negative_pooled = encode(pipeline, LONG)
    assert negative.shape == embeds.shape and negative.abs().max() == 0
    assert negative_pooled.shape == pooled.shape and negative_pooled.abs().max() == 0

    with_negative = encode(pipeline, LONG, negative_prompt="")
    assert with_negative[1].abs().max() > 0  # an explicit "" is encoded, as stock

    # negative_prompt_2 reaches bigG only; prompt_2 likewise.
    plain = encode(pipeline, SHORT, negative_prompt="blurry")
    second = encode(pipeline, SHORT, negative_prompt="blurry", negative_prompt_2="lowres watermark")
    torch.testing.assert_close(plain[1][..., :WIDTH_L], second[1][..., :WIDTH_L])
    assert (plain[1][..., WIDTH_L:] - second[1][..., WIDTH_L:]).abs().max() > 1e-4
    assert (plain[3] - second[3]).abs().max() > 1e-4
    third = encode(pipeline, SHORT, prompt_2="an oil painting", negative_prompt="blurry")
    torch.testing.assert_close(plain[0][..., :WIDTH_L], third[0][..., :WIDTH_L])
    assert (plain[0][..., WIDTH_L:] - third[0][..., WIDTH_L:]).abs().max() > 1e-4

    pipeline.register_to_config(force_zeros_for_empty_prompt=False)
    assert encode(pipeline, LONG)[1].abs().max() > 0


@pytest.mark.parametrize("bigg", ["stretch", "windows"])
def test_batches_and_images_per_prompt(bigg):
    pipeline = make_pipeline(bigg)
    negatives = ["blurry", LONG]
    embeds, negative, pooled, negative_pooled = encode(
        pipeline, [SHORT, LONG], negative_prompt=negatives, num_images_per_prompt=2
    )
    assert embeds.shape == negative.shape == (4, 248, WIDTH_L + WIDTH_G)
    assert pooled.shape == negative_pooled.shape == (4, WIDTH_G)
    for row, (prompt, negative_prompt) in enumerate(zip([SHORT, LONG], negatives)):
        alone = encode(pipeline, prompt, negative_prompt=negative_prompt)
        for batched, single in zip((embeds, negative, pooled, negative_pooled), alone):
            torch.testing.assert_close(batched[2 * row], single[0])
            torch.testing.assert_close(batched[2 * row + 1], single[0])
    with pytest.raises(ValueError, match="batch size"):
        encode(pipeline, [SHORT, LONG], negative_prompt=["one"])
    with pytest.raises(TypeError, match="same type"):
        encode(pipeline, [SHORT], negative_prompt="one")


def test_literal_exclamation_mark_stays_bpe_token():
    """tokenizer_2 pads with "!" and would turn a literal "!" into pad id 0; the pipeline never uses it for text."""
    pipeline = make_pipeline()
    assert pipeline.tokenizer_2("wow!", add_special_tokens=False)["input_ids"][-1] == 0  # the trap, as shipped
    tokenized = tokenize_prompt(text_tokenizer(pipeline), "wow!", 248)
    assert tokenized.input_ids[1:4].tolist() == [ids_of("wow")[0], 256, END_OF_TEXT]

    components = tiny_sdxl_components(long_clip=True)
    stock_bigg = copy.deepcopy(components["text_encoder_2"])
    pipeline = apply_long_clip(LongCLIPStableDiffusionXLPipeline(**components), None)
    embeds = encode(pipeline, "wow!", do_classifier_free_guidance=False)[0]
    expected, _ = bigg_states(stock_bigg, [ids_of("wow")[0], 256], 77)
    torch.testing.assert_close(embeds[0, :4, WIDTH_L:], expected[:4])

    refiner = apply_long_clip(StableDiffusionXLImg2ImgPipeline(**tiny_sdxl_components(refiner=True)), "stretch")
    assert refiner.tokenizer is None
    tokenized = tokenize_prompt(text_tokenizer(refiner), "wow!", 248)
    assert tokenized.input_ids[2].item() == 256


@pytest.mark.parametrize("bigg", ["stretch", "windows"])
def test_weighting_and_clip_skip(bigg):
    pipeline = make_pipeline(bigg)
    plain = encode(pipeline, "a cat on a mat", do_classifier_free_guidance=False)[0]
    ones = encode(pipeline, "a (cat:1.0) on a mat", do_classifier_free_guidance=False)[0]
    weighted = encode(pipeline, "a (cat:1.5) on a mat", do_classifier_free_guidance=False)[0]
    torch.testing.assert_close(plain, ones)
    assert (plain[..., :WIDTH_L] - weighted[..., :WIDTH_L]).abs().max() > 1e-3
    assert (plain[..., WIDTH_L:] - weighted[..., WIDTH_L:]).abs().max() > 1e-3
    # Weighting is the same rule on both encoders: empty + w · (z − empty), here on "cat" (position 2) only.
    empty = encode(pipeline, "", do_classifier_free_guidance=False)[0]
    torch.testing.assert_close(weighted[:, 2], empty[:, 2] + 1.5 * (plain[:, 2] - empty[:, 2]))
    torch.testing.assert_close(weighted[:, 3:], plain[:, 3:])

    # clip_skip=1 on two-layer encoders: the embedding layer's output, for prompt and negative prompt alike.
    embeds, negative, _, _ = encode(pipeline, "a cat", negative_prompt="a dog", clip_skip=1)
    with torch.no_grad():
        length = pipeline.text_encoder_2.config.max_position_embeddings
        ids = torch.tensor([[START_OF_TEXT, *ids_of("a dog"), END_OF_TEXT] + [0] * (length - 4)])
        expected = pipeline.text_encoder_2(ids, output_hidden_states=True).hidden_states[0]
    torch.testing.assert_close(negative[:, :length, WIDTH_L:], expected)
    assert (embeds - encode(pipeline, "a cat", negative_prompt="a dog")[0]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Generation, loading, other pipelines


def test_call_with_callbacks_and_lora_scale():
    pipeline = make_pipeline()
    seen = {}

    def on_step_end(pipe, step, timestep, tensors):
        seen[step] = {name: tuple(value.shape) for name, value in tensors.items()}
        return tensors

    generator = torch.Generator().manual_seed(0)
    output = pipeline(
        LONG,
        negative_prompt="blurry",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=generator,
        output_type="np",
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"],
        cross_attention_kwargs={"scale": 0.5},
    )
    assert output.images.shape == (1, 32, 32, 3)
    assert seen[1]["prompt_embeds"] == (2, 248, WIDTH_L + WIDTH_G)
    assert seen[1]["add_text_embeds"] == (2, WIDTH_G)
    assert seen[1]["add_time_ids"] == (2, 6)
    assert pipeline._lora_scale == 0.5


def test_save_load_round_trip(tmp_path):
    pipeline = make_pipeline("windows", hidden_state="final_norm")
    pipeline.register_to_config(long_clip_pad_token_id=END_OF_TEXT)
    before = encode(pipeline, LONG, negative_prompt="blurry")
    pipeline.save_pretrained(tmp_path)
    loaded = LongCLIPStableDiffusionXLPipeline.from_pretrained(tmp_path)
    assert loaded.config.long_clip_bigg_mode == "windows"
    assert loaded.config.long_clip_hidden_state == "final_norm"
    assert loaded.config.long_clip_pad_token_id == END_OF_TEXT
    assert loaded.text_encoder.config.max_position_embeddings == 248
    assert loaded.text_encoder_2.config.max_position_embeddings == 77
    for expected, actual in zip(before, encode(loaded, LONG, negative_prompt="blurry")):
        torch.testing.assert_close(actual, expected)

    stretched = make_pipeline("stretch")
    stretched.save_pretrained(tmp_path / "stretched")
    loaded = LongCLIPStableDiffusionXLPipeline.from_pretrained(tmp_path / "stretched")
    assert loaded.text_encoder_2.config.max_position_embeddings == 248  # not stretched twice
    torch.testing.assert_close(encode(loaded, LONG)[0], encode(stretched, LONG)[0])


def test_from_pretrained_stock_base(tmp_path):
    stock = StableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=False))
    stock.save_pretrained(tmp_path / "base")
    long_clip = tiny_sdxl_components(long_clip=True, seed=3)["text_encoder"]

    pipeline = LongCLIPStableDiffusionXLPipeline.from_pretrained(tmp_path / "base", long_clip=long_clip)
    assert pipeline.config.long_clip_bigg_mode == "stretch"
    assert pipeline.config.long_clip_pad_token_id == 0
    assert pipeline.text_encoder.config.max_position_embeddings == 248
    assert pipeline.text_encoder_2.config.max_position_embeddings == 248
    torch.testing.assert_close(pipeline.text_encoder.state_dict()["embeddings.token_embedding.weight"],
                               long_clip.state_dict()["embeddings.token_embedding.weight"])

    stretched = LongCLIPStableDiffusionXLPipeline.from_pretrained(tmp_path / "base", long_clip="stretch", bigg="windows")
    assert stretched.config.long_clip_pad_token_id == END_OF_TEXT
    assert stretched.config.long_clip_bigg_mode == "windows"
    assert stretched.text_encoder.config.max_position_embeddings == 248

    # A user-supplied long bigG, from a single file.
    long_bigg = stretch_text_encoder(copy.deepcopy(stock.text_encoder_2))
    save_comfy_file(long_bigg, tmp_path / "bigg-long.safetensors")
    supplied = LongCLIPStableDiffusionXLPipeline.from_pretrained(
        tmp_path / "base", long_clip=long_clip, bigg=str(tmp_path / "bigg-long.safetensors")
    )
    assert supplied.config.long_clip_bigg_mode == "supplied"
    assert supplied.text_encoder_2.config.max_position_embeddings == 248
    assert encode(supplied, LONG)[0].shape == (1, 248, WIDTH_L + WIDTH_G)

    with pytest.raises(ValueError, match="reads 77 positions"):
        LongCLIPStableDiffusionXLPipeline.from_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="stretchy: no such file"):  # neither a mode nor a readable checkpoint
        LongCLIPStableDiffusionXLPipeline.from_pretrained(tmp_path / "base", long_clip="stretch", bigg="stretchy")
    with pytest.raises(ValueError, match="hidden_state"):
        LongCLIPStableDiffusionXLPipeline.from_pretrained(tmp_path / "base", long_clip="stretch", hidden_state="last")


def test_apply_long_clip_on_sdxl_img2img_inpaint_controlnet():
    components = tiny_sdxl_components(long_clip=False)
    img2img = apply_long_clip(StableDiffusionXLImg2ImgPipeline(**components), "stretch")
    assert get_setting(img2img, "long_clip_bigg_mode", None) == "stretch"
    assert get_setting(img2img, "long_clip_pad_token_id", None) == END_OF_TEXT  # SDXL's own CLIP-L, stretched
    assert "long_clip_bigg_mode" not in img2img.config  # stock config untouched: `components` keeps working
    embeds, negative, pooled, _ = encode(img2img, LONG, negative_prompt="blurry")
    assert embeds.shape == negative.shape == (1, 248, WIDTH_L + WIDTH_G)
    image = torch.rand(1, 3, 32, 32)
    output = img2img(LONG, image=image, num_inference_steps=2, strength=0.5, output_type="np")
    assert output.images.shape == (1, 32, 32, 3)

    inpaint = apply_long_clip(StableDiffusionXLInpaintPipeline(**tiny_sdxl_components(long_clip=False)), "stretch", bigg="windows")
    assert encode(inpaint, LONG)[0].shape == (1, 248, WIDTH_L + WIDTH_G)

    components = tiny_sdxl_components(long_clip=False)
    controlnet = ControlNetModel.from_unet(components["unet"], conditioning_embedding_out_channels=(4, 8))
    pipeline = apply_long_clip(StableDiffusionXLControlNetPipeline(controlnet=controlnet, **components), "stretch")
    assert encode(pipeline, LONG)[0].shape == (1, 248, WIDTH_L + WIDTH_G)


def test_apply_long_clip_on_refiner():
    refiner = StableDiffusionXLImg2ImgPipeline(**tiny_sdxl_components(refiner=True))
    stock_bigg = copy.deepcopy(refiner.text_encoder_2)
    apply_long_clip(refiner, "stretch")
    assert refiner.text_encoder_2.config.max_position_embeddings == 248
    embeds, negative, pooled, negative_pooled = encode(refiner, SHORT, negative_prompt=LONG)
    assert embeds.shape == negative.shape == (1, 248, WIDTH_G)
    expected, expected_pooled = bigg_states(stock_bigg, ids_of(SHORT), 77)
    torch.testing.assert_close(embeds[0, :8], expected[:8])
    torch.testing.assert_close(pooled[0], expected_pooled)
    output = refiner(LONG, image=torch.rand(1, 3, 32, 32), num_inference_steps=2, strength=0.5, output_type="np")
    assert output.images.shape == (1, 32, 32, 3)

    # Textual inversion on the refiner goes into tokenizer_2 / text_encoder_2; the Long-CLIP reading uses it.
    vector = torch.randn(WIDTH_G, generator=torch.Generator().manual_seed(5))
    refiner.load_textual_inversion(
        {"<toy>": vector}, token="<toy>", text_encoder=refiner.text_encoder_2, tokenizer=refiner.tokenizer_2
    )
    toy_id = refiner.tokenizer_2.convert_tokens_to_ids("<toy>")
    embeds = encode(refiner, "a <toy> on a mat!", do_classifier_free_guidance=False)[0]
    ids = [ids_of("a")[0], toy_id, *ids_of("on a mat"), 256]
    expected, _ = bigg_states(refiner.text_encoder_2, ids, 248)
    torch.testing.assert_close(embeds[0, :8], expected[:8])

    # A base and its refiner sharing bigG (the usual set-up): it is stretched once.
    base = apply_long_clip(StableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=False)), "stretch")
    refiner = StableDiffusionXLImg2ImgPipeline(**{**tiny_sdxl_components(refiner=True), "text_encoder_2": base.text_encoder_2})
    apply_long_clip(refiner, "stretch")
    assert refiner.text_encoder_2.config.max_position_embeddings == 248


def test_apply_long_clip_rejects_sdxl_options_on_sd15():
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(**tiny_sd_components(long_clip=False))
    with pytest.raises(ValueError, match="SDXL pipelines only"):
        apply_long_clip(pipeline, "stretch", bigg="windows")


# --------------------------------------------------------------------------------------------------------------------
# A saved folder gives the same result in stock diffusers (issue 11 §2)


@pytest.mark.parametrize("long_clip", ["model", "stretch"])
def test_saved_pipeline_gives_the_same_result_in_stock_diffusers(long_clip, tmp_path):
    import numpy as np

    stock_base = StableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=False))
    stock_base.save_pretrained(tmp_path / "base")
    source = tiny_sdxl_components(long_clip=True, seed=3)["text_encoder"] if long_clip == "model" else "stretch"
    ours = LongCLIPStableDiffusionXLPipeline.from_pretrained(tmp_path / "base", long_clip=source, bigg="stretch")
    ours.save_pretrained(tmp_path / "saved")
    stock = StableDiffusionXLPipeline.from_pretrained(tmp_path / "saved")
    assert stock.tokenizer.pad_token_id == (0 if long_clip == "model" else END_OF_TEXT)
    assert stock.tokenizer_2.model_max_length == 248

    for negative_prompt in (None, "blurry"):  # None: zeros (force_zeros_for_empty_prompt), as stock
        expected = encode(stock, LONG, negative_prompt=negative_prompt)
        actual = encode(ours, LONG, negative_prompt=negative_prompt)
        for expected_embeds, actual_embeds in zip(expected, actual):
            assert expected_embeds.shape == actual_embeds.shape
            torch.testing.assert_close(actual_embeds, expected_embeds, rtol=0, atol=1e-5)
    images = [
        pipeline(LONG, negative_prompt="blurry", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
        for pipeline in (stock, ours)
    ]
    np.testing.assert_allclose(images[1], images[0], rtol=0, atol=1e-5)
