"""LongCLIPStableDiffusionPipeline and apply_long_clip on tiny random SD 1.x components (real tokenizer, no Hub)."""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from longclip_diffusion.checkpoints import save_comfy_file
from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline, apply_long_clip
from longclip_diffusion.testing import clip_text_config, random_text_encoder, tiny_sd_components
from longclip_diffusion.tokenizer import END_OF_TEXT

LONG_PROMPT = (
    "A quiet harbour at dawn, fishing boats with peeling blue paint rocking on glassy water, gulls circling over "
    "stacked lobster traps, a lighthouse on the rocky point with its lamp still burning, mist rolling off the hills, "
    "a fisherman in a yellow raincoat coiling rope on the pier, warm light catching the wet cobblestones, "
)
TAIL_A = "and a bright red bicycle leaning against a lamppost"
TAIL_B = "and a small black cat asleep on a wooden crate"


def make_pipeline(**overrides) -> LongCLIPStableDiffusionPipeline:
    components = tiny_sd_components()
    components.update(overrides)
    pipeline = LongCLIPStableDiffusionPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run(pipeline, prompt, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipeline(prompt, height=32, width=32, output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def pipeline():
    return make_pipeline()


def test_long_prompt_reads_past_77_tokens(pipeline):
    prompt_a, prompt_b = LONG_PROMPT * 3 + TAIL_A, LONG_PROMPT * 3 + TAIL_B
    assert pipeline.tokenizer(prompt_a, add_special_tokens=False, return_length=True)["length"][0] > 150
    embeds_a, _ = pipeline.encode_prompt(prompt_a, "cpu", 1, False)
    embeds_b, _ = pipeline.encode_prompt(prompt_b, "cpu", 1, False)
    assert embeds_a.shape == (1, 248, 32)
    assert (embeds_a - embeds_b)[0, 200:].abs().max() > 1e-3
    images = run(pipeline, [prompt_a, prompt_b])
    assert images.shape == (2, 32, 32, 3) and np.abs(images[0] - images[1]).max() > 1e-4


def test_batch_output_equals_single_output(pipeline):
    """diffusers' batch test: a very long prompt beside a short one must not change either."""
    prompts = [100 * "very long ", "a cat"]
    single = run(pipeline, prompts[1], negative_prompt="blurry")
    batch = run(pipeline, prompts, negative_prompt=["low quality", "blurry"], generator=[
        torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)])
    np.testing.assert_allclose(batch[1], single[0], atol=1e-5)


def test_negative_prompts_and_images_per_prompt(pipeline):
    embeds, negative = pipeline.encode_prompt(["a", "b " * 100], "cpu", 3, True, negative_prompt=["x", "y"])
    assert embeds.shape == negative.shape == (6, 248, 32)
    torch.testing.assert_close(embeds[0], embeds[2])
    assert not torch.allclose(embeds[0], embeds[3])
    with pytest.raises(ValueError, match="batch size"):
        pipeline.encode_prompt(["a", "b"], "cpu", 1, True, negative_prompt=["x"])
    with pytest.raises(TypeError, match="same type"):
        pipeline.encode_prompt(["a"], "cpu", 1, True, negative_prompt="x")


def test_prompt_embeds_passed_in_give_the_same_image(pipeline):
    embeds, negative = pipeline.encode_prompt(LONG_PROMPT, "cpu", 1, True, negative_prompt="blurry")
    from_text = run(pipeline, LONG_PROMPT, negative_prompt="blurry")
    from_embeds = run(pipeline, None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    np.testing.assert_allclose(from_embeds, from_text, atol=1e-6)


def test_clip_skip_uses_an_earlier_layer(pipeline):
    plain, _ = pipeline.encode_prompt("a cat", "cpu", 1, False)
    skipped, _ = pipeline.encode_prompt("a cat", "cpu", 1, False, clip_skip=1)
    encoder = pipeline.text_encoder
    with torch.no_grad():
        hidden = encoder(pipeline.tokenizer("a cat", padding="max_length", return_tensors="pt").input_ids,
                         output_hidden_states=True).hidden_states
    assert not torch.allclose(plain, skipped)
    torch.testing.assert_close(skipped[0, :3], encoder.final_layer_norm(hidden[-2])[0, :3])


def test_callback_sees_248_token_embeddings(pipeline):
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append(tuple(tensors["prompt_embeds"].shape))
        return tensors

    run(pipeline, LONG_PROMPT, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert seen == [(2, 248, 32)] * 2  # negative + positive, two steps


def test_save_and_load_round_trip(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "saved")
    loaded = LongCLIPStableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder.config.max_position_embeddings == 248
    assert loaded.tokenizer.model_max_length == 248
    np.testing.assert_allclose(run(loaded, LONG_PROMPT), run(pipeline, LONG_PROMPT), atol=1e-6)


def test_from_pretrained_with_long_clip_file_and_stretch(tmp_path):
    base = StableDiffusionPipeline(**tiny_sd_components(long_clip=False))
    base.save_pretrained(tmp_path / "base")
    long_encoder = random_text_encoder(clip_text_config(), with_projection=True, seed=7, long=True)
    save_comfy_file(long_encoder, tmp_path / "longclip.safetensors")

    from_file = LongCLIPStableDiffusionPipeline.from_pretrained(tmp_path / "base", long_clip=tmp_path / "longclip.safetensors")
    assert from_file.config.long_clip_pad_token_id == 0
    torch.testing.assert_close(
        from_file.text_encoder.embeddings.position_embedding.weight,
        long_encoder.text_model.embeddings.position_embedding.weight,
    )
    stretched = LongCLIPStableDiffusionPipeline.from_pretrained(tmp_path / "base", long_clip="stretch")
    assert stretched.config.long_clip_pad_token_id == END_OF_TEXT
    assert stretched.text_encoder.config.max_position_embeddings == 248
    embeds, _ = stretched.encode_prompt(LONG_PROMPT * 2, "cpu", 1, False)
    assert embeds.shape == (1, 248, 32)

    # Both spellings of the dtype work, on the long encoder too, without diffusers' torch_dtype deprecation warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for name in ("dtype", "torch_dtype"):
            half = LongCLIPStableDiffusionPipeline.from_pretrained(
                tmp_path / "base", long_clip=tmp_path / "longclip.safetensors", **{name: torch.float16}
            )
            assert half.unet.dtype == half.text_encoder.dtype == torch.float16, name


def test_textual_inversion_through_the_mixin(pipeline):
    pipeline = make_pipeline()
    token_vector = torch.randn(1, 32)
    pipeline.load_textual_inversion({"<sparkle>": token_vector[0]}, token="<sparkle>")
    with_token, _ = pipeline.encode_prompt("a <sparkle> cat", "cpu", 1, False)
    without, _ = pipeline.encode_prompt("a cat", "cpu", 1, False)
    assert with_token.shape == (1, 248, 32) and not torch.allclose(with_token, without)


def test_lora_through_the_mixin():
    """`lora_scale` reaches the Long-CLIP encoder (0 switches a loaded LoRA off). Files: tests/test_lora.py."""
    pytest.importorskip("peft")
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipeline = make_pipeline()
    before, _ = pipeline.encode_prompt(LONG_PROMPT, "cpu", 1, False)
    donor = tiny_sd_components()["text_encoder"]
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False), donor)
    pipeline.load_lora_weights({f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(donor).items()})
    after, _ = pipeline.encode_prompt(LONG_PROMPT, "cpu", 1, False)
    switched_off, _ = pipeline.encode_prompt(LONG_PROMPT, "cpu", 1, False, lora_scale=0.0)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(switched_off, before, rtol=0, atol=1e-6)


def _image(size=32):
    from PIL import Image

    return Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("kind", ["img2img", "inpaint", "controlnet"])
def test_apply_long_clip_to_other_pipelines(kind, tmp_path):
    components = tiny_sd_components(long_clip=False)
    components.pop("image_encoder")
    extra = {}
    if kind == "img2img":
        pipeline, extra = StableDiffusionImg2ImgPipeline(**components), {"image": _image(), "strength": 0.9}
    elif kind == "inpaint":
        components["unet"] = tiny_sd_components(long_clip=False)["unet"]
        pipeline = StableDiffusionInpaintPipeline(**components)
        extra = {"image": _image(), "mask_image": _image(), "strength": 0.9}
    else:
        controlnet = ControlNetModel.from_unet(components["unet"], conditioning_embedding_out_channels=(4, 8))
        pipeline = StableDiffusionControlNetPipeline(controlnet=controlnet, **components)
        extra = {"image": _image()}
    pipeline.set_progress_bar_config(disable=True)
    del components

    old_encoder = weakref.ref(pipeline.text_encoder)
    long_encoder = random_text_encoder(clip_text_config(), seed=3, long=True)
    save_comfy_file(long_encoder, tmp_path / "long.safetensors")
    apply_long_clip(pipeline, tmp_path / "long.safetensors")
    gc.collect()
    assert old_encoder() is None  # the 77-token encoder is gone, not kept beside the long one
    assert pipeline.tokenizer.model_max_length == 248

    embeds_a, _ = pipeline.encode_prompt(LONG_PROMPT * 2 + TAIL_A, "cpu", 1, False)
    embeds_b, _ = pipeline.encode_prompt(LONG_PROMPT * 2 + TAIL_B, "cpu", 1, False)
    assert embeds_a.shape == (1, 248, 32) and (embeds_a - embeds_b).abs().max() > 1e-3
    if kind == "inpaint":
        return  # a 4-channel tiny UNet cannot inpaint; the encoding path is what changed
    images = pipeline(LONG_PROMPT, num_inference_steps=2, height=32, width=32, output_type="np", **extra).images
    assert images.shape == (1, 32, 32, 3)


def test_apply_stretch_in_place_keeps_the_same_module():
    components = tiny_sd_components(long_clip=False)
    components.pop("image_encoder")
    pipeline = StableDiffusionImg2ImgPipeline(**components)
    encoder = pipeline.text_encoder
    apply_long_clip(pipeline, "stretch")
    assert pipeline.text_encoder is encoder and encoder.config.max_position_embeddings == 248
    embeds, _ = pipeline.encode_prompt("a cat", "cpu", 1, False)
    with torch.no_grad():
        eos_padded = encoder(pipeline.tokenizer("a cat", padding="max_length", return_tensors="pt").input_ids)
    torch.testing.assert_close(embeds, eos_padded.last_hidden_state)  # SD's own encoder keeps end-of-text padding


# --------------------------------------------------------------------------------------------------------------------
# A converted or saved folder gives the same result in stock diffusers (issue 11 §2)


def _stock_vs_ours(stock, ours, prompt, negative_prompt="blurry"):
    """Embeddings ≤ 1e-5 and the same image for a fixed seed."""
    stock.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected = stock.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative_prompt)
        actual = ours.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative_prompt)
    for expected_embeds, actual_embeds in zip(expected, actual):
        assert expected_embeds.shape == actual_embeds.shape == (1, 248, 32)
        torch.testing.assert_close(actual_embeds, expected_embeds, rtol=0, atol=1e-5)
    np.testing.assert_allclose(run(ours, prompt, negative_prompt=negative_prompt),
                               run(stock, prompt, negative_prompt=negative_prompt), rtol=0, atol=1e-5)


def test_converted_folder_gives_the_same_result_in_stock_diffusers(tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    from longclip_diffusion.checkpoints import convert

    base = StableDiffusionPipeline(**tiny_sd_components(long_clip=False))
    base.save_pretrained(tmp_path / "base")
    long_encoder = random_text_encoder(clip_text_config(), with_projection=True, seed=7, long=True)
    save_comfy_file(long_encoder, tmp_path / "longclip.safetensors")
    convert(tmp_path / "longclip.safetensors", tmp_path / "out")  # what `longclip convert` writes

    stock = StableDiffusionPipeline.from_pretrained(
        tmp_path / "base",
        text_encoder=CLIPTextModel.from_pretrained(tmp_path / "out" / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(tmp_path / "out" / "tokenizer"),
    )
    ours = LongCLIPStableDiffusionPipeline.from_pretrained(tmp_path / "base", long_clip=tmp_path / "longclip.safetensors")
    assert stock.tokenizer.pad_token_id == ours.config.long_clip_pad_token_id == 0
    _stock_vs_ours(stock, ours, LONG_PROMPT * 2 + TAIL_A)  # past 248 tokens: both cut at the same place


@pytest.mark.parametrize("long_clip", ["file", "stretch"])
def test_saved_pipeline_gives_the_same_result_in_stock_diffusers(long_clip, tmp_path):
    base = StableDiffusionPipeline(**tiny_sd_components(long_clip=False))
    base.save_pretrained(tmp_path / "base")
    source = "stretch"
    if long_clip == "file":
        source = tmp_path / "longclip.safetensors"
        save_comfy_file(random_text_encoder(clip_text_config(), with_projection=True, seed=7, long=True), source)
    ours = LongCLIPStableDiffusionPipeline.from_pretrained(tmp_path / "base", long_clip=source)
    ours.save_pretrained(tmp_path / "saved")
    stock = StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert stock.tokenizer.pad_token_id == ours.config.long_clip_pad_token_id == (0 if long_clip == "file" else END_OF_TEXT)
    _stock_vs_ours(stock, ours, LONG_PROMPT + TAIL_B)

    # The same for a stock pipeline given Long-CLIP in place and saved.
    applied = apply_long_clip(StableDiffusionPipeline.from_pretrained(tmp_path / "base"), source)
    applied.save_pretrained(tmp_path / "applied")
    _stock_vs_ours(StableDiffusionPipeline.from_pretrained(tmp_path / "applied"), ours, LONG_PROMPT + TAIL_B)
