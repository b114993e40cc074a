"""LoRA as users apply it: a LoRA file saved by diffusers, `pipe.load_lora_weights(path)` on our pipelines.

The LoRA layers are built with peft on tiny models the way diffusers' training scripts build them, saved with
diffusers' `save_lora_weights`, and loaded into `LongCLIPStableDiffusionPipeline` / `LongCLIPStableDiffusionXLPipeline`.
The text-encoder LoRAs are made on stock 77-position encoders (a LoRA trained against CLIP-L or bigG) and applied to
the 248-position Long-CLIP encoders. The reference is independent of the loader: the same deltas `B @ A` merged by hand
into the weights of an identical pipeline.
"""

from __future__ import annotations


import pytest
import torch

from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline, LongCLIPStableDiffusionXLPipeline, apply_long_clip
from longclip_diffusion.testing import LORA_RANK, merge_lora_by_hand, tiny_sd_components, tiny_sdxl_components, trained_lora

peft = pytest.importorskip("peft", reason="LoRA needs peft (installed by the [test] extra)")

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # diffusers' LoRA training scripts
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
PROMPT = " ".join(f"word{i % 10} tree" for i in range(60))  # well past 77 tokens


def images(pipeline, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipeline(PROMPT, num_inference_steps=2, height=32, width=32, generator=generator, output_type="np",
                    **kwargs).images


def assert_lora_applied(pipeline, reference, before: dict, encode) -> None:
    """The loaded pipeline matches the hand-merged one, and differs clearly from the pipeline without LoRA."""
    for got, want, base in zip(encode(pipeline), encode(reference), before["encoded"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert (got - base).abs().max() > 1e-2
    got, want = images(pipeline), images(reference)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-4, atol=1e-4)
    assert abs(got - before["images"]).max() > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# SD 1.x


def sd_pipeline() -> LongCLIPStableDiffusionPipeline:
    pipeline = LongCLIPStableDiffusionPipeline(**tiny_sd_components(long_clip=True))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def sd_encode(pipeline):
    return pipeline.encode_prompt(PROMPT, torch.device("cpu"), 1, True, negative_prompt="blurry")


def test_sd_lora_file_on_unet_and_long_clip_l(tmp_path):
    from diffusers import StableDiffusionPipeline

    stock = tiny_sd_components(long_clip=False)  # a CLIP-L with 77 positions: what the LoRA was trained against
    unet_lora = trained_lora(stock["unet"], UNET_TARGETS, seed=1)
    text_lora = trained_lora(stock["text_encoder"], TEXT_ENCODER_TARGETS, seed=2)
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=unet_lora, text_encoder_lora_layers=text_lora)

    pipeline = sd_pipeline()
    before = {"encoded": sd_encode(pipeline), "images": images(pipeline)}
    pipeline.load_lora_weights(tmp_path)

    reference = sd_pipeline()
    assert merge_lora_by_hand(reference.unet, unet_lora) == 4 * 2 * 4  # 4 projections, attn1/attn2, 4 transformer blocks
    assert merge_lora_by_hand(reference.text_encoder, text_lora) == 4 * 2  # two layers
    assert_lora_applied(pipeline, reference, before, sd_encode)

    pipeline.set_adapters(pipeline.get_active_adapters(), adapter_weights=0.5)
    half = sd_pipeline()
    merge_lora_by_hand(half.unet, unet_lora, scale=0.5)
    merge_lora_by_hand(half.text_encoder, text_lora, scale=0.5)
    assert_lora_applied(pipeline, half, before, sd_encode)

    pipeline.unload_lora_weights()
    for got, base in zip(sd_encode(pipeline), before["encoded"]):
        torch.testing.assert_close(got, base, rtol=0, atol=1e-6)


def test_sd_kohya_text_encoder_lora(tmp_path):
    """The A1111/kohya layout most CLIP-L LoRAs circulate in (`lora_te_text_model_…`, `lora_down`/`lora_up`, alpha)."""
    from safetensors.torch import save_file

    text_lora = trained_lora(tiny_sd_components(long_clip=False)["text_encoder"], TEXT_ENCODER_TARGETS, seed=3)
    kohya = {}
    for key, value in text_lora.items():  # <module>.lora_linear_layer.{down,up}.weight
        module, kind = key.removesuffix(".weight").rsplit(".", 1)
        module = "lora_te_text_model_" + module.rsplit(".", 1)[0].removeprefix("text_model.").replace(".", "_")
        kohya[f"{module}.lora_{kind}.weight"] = value
        kohya[f"{module}.alpha"] = torch.tensor(float(LORA_RANK))
    save_file(kohya, tmp_path / "kohya.safetensors")

    pipeline = sd_pipeline()
    before = sd_encode(pipeline)
    pipeline.load_lora_weights(tmp_path, weight_name="kohya.safetensors")
    reference = sd_pipeline()
    assert merge_lora_by_hand(reference.text_encoder, text_lora) == 4 * 2
    for got, want, base in zip(sd_encode(pipeline), sd_encode(reference), before):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert (got - base).abs().max() > 1e-2


# --------------------------------------------------------------------------------------------------------------------
# SDXL


def sdxl_pipeline() -> LongCLIPStableDiffusionXLPipeline:
    pipeline = apply_long_clip(LongCLIPStableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=True)), None,
                               bigg="stretch")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def sdxl_encode(pipeline):
    return pipeline.encode_prompt(PROMPT, device=torch.device("cpu"), negative_prompt="blurry")


def test_sdxl_lora_file_on_unet_and_both_long_encoders(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    stock = tiny_sdxl_components(long_clip=False)  # CLIP-L and bigG with 77 positions
    unet_lora = trained_lora(stock["unet"], UNET_TARGETS, seed=1)
    text_lora = trained_lora(stock["text_encoder"], TEXT_ENCODER_TARGETS, seed=2)
    text_2_lora = trained_lora(stock["text_encoder_2"], TEXT_ENCODER_TARGETS, seed=3)
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=unet_lora, text_encoder_lora_layers=text_lora,
                                                text_encoder_2_lora_layers=text_2_lora)

    pipeline = sdxl_pipeline()
    assert pipeline.text_encoder.config.max_position_embeddings == 248
    assert pipeline.text_encoder_2.config.max_position_embeddings == 248
    before = {"encoded": sdxl_encode(pipeline), "images": images(pipeline)}
    pipeline.load_lora_weights(tmp_path)

    reference = sdxl_pipeline()
    assert merge_lora_by_hand(reference.unet, unet_lora) > 0
    assert merge_lora_by_hand(reference.text_encoder, text_lora) == 4 * 2
    assert merge_lora_by_hand(reference.text_encoder_2, text_2_lora) == 4 * 2
    assert_lora_applied(pipeline, reference, before, sdxl_encode)
