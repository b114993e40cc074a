"""SD3 and Flux in the demo: tiny stock folders through the real loader, the backend, and one gradio_client run."""

from __future__ import annotations

import argparse
import socket

import numpy as np
import pytest

from longclip_diffusion.demo import app
from longclip_diffusion.demo.app import FLUX, SD3, SD15, DemoBackend, build_demo, launch_demo
from longclip_diffusion.demo.examples import EXAMPLES
from longclip_diffusion.demo.models import ModelSpec, encode, load_models
from longclip_diffusion.prompts import count_tokens

TINY_SIZE = 64  # pixels; the tiny VAE halves it
SEED = 1234
PROMPT = EXAMPLES[0][1]  # past 77 CLIP tokens, within 248
LATE_A, LATE_B = PROMPT + " A yellow kite flies above the lighthouse.", PROMPT + " A black piano stands on the pier."
FAMILIES = {SD3: ("sd3", "tiny_sd3_folder"), FLUX: ("flux", "tiny_flux_folder")}


def _real_backend() -> DemoBackend:
    return DemoBackend(lambda spec: load_models(spec, device="cpu"))


def _generate(backend, family, base, **overrides):
    kwargs = dict(
        prompt=PROMPT, negative_prompt="", seed=SEED, steps=2, guidance=5.0, width=TINY_SIZE, height=TINY_SIZE,
        family=family, base=str(base), long_clip="stretch", compare=True,
    )
    kwargs.update(overrides)
    return backend.generate(**kwargs)


def _pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_late_words_are_past_clip_and_within_long_clip():
    for prompt in (LATE_A, LATE_B):
        assert "kite" not in count_tokens(prompt, limit=77).kept_text
        assert count_tokens(prompt, limit=77).num_tokens < 248
    assert count_tokens(LATE_A, limit=77).kept_text == count_tokens(LATE_B, limit=77).kept_text


@pytest.mark.parametrize("family", list(FAMILIES))
def test_long_prompt_gives_both_images_as_the_library_and_stock_diffusers_do(family, request):
    """Long-CLIP side = the library's Long-CLIP class; stock side = the stock diffusers class of the same family, both
    called directly on the same seed (independent references); the stock one shares the denoiser, VAE and T5."""
    import diffusers
    import torch

    from longclip_diffusion import pipelines

    key, fixture = FAMILIES[family]
    folder = request.getfixturevalue(fixture)
    backend = _real_backend()
    result = _generate(backend, family, folder, negative_prompt="blurry" if key == "sd3" else "")
    assert result.ok, result.message
    assert result.long_image.size == result.stock_image.size == (TINY_SIZE, TINY_SIZE)

    models = backend.models.get(ModelSpec(str(folder), "stretch", family=key))
    long_pipe, stock = models.long_clip, models.stock()
    stock_class = {"sd3": diffusers.StableDiffusion3Pipeline, "flux": diffusers.FluxPipeline}[key]
    long_class = {"sd3": pipelines.LongCLIPStableDiffusion3Pipeline, "flux": pipelines.LongCLIPFluxPipeline}[key]
    assert type(long_pipe) is long_class and type(stock) is stock_class
    assert stock.transformer is long_pipe.transformer and stock.vae is long_pipe.vae
    t5 = "text_encoder_3" if key == "sd3" else "text_encoder_2"
    assert getattr(stock, t5) is getattr(long_pipe, t5), "T5 is shared, not loaded twice"
    assert stock.text_encoder.config.max_position_embeddings == 77
    assert long_pipe.text_encoder.config.max_position_embeddings == 248
    assert stock.scheduler is not long_pipe.scheduler

    call = dict(num_inference_steps=2, guidance_scale=5.0, height=TINY_SIZE, width=TINY_SIZE, output_type="pil")
    if key == "sd3":
        call["negative_prompt"] = "blurry"
    references = {
        "long_image": long_class.from_pretrained(folder, long_clip="stretch"),
        "stock_image": stock_class.from_pretrained(folder),
    }
    for name, reference in references.items():
        reference.set_progress_bar_config(disable=True)
        image = reference(PROMPT, generator=torch.Generator("cpu").manual_seed(SEED), **call).images[0]
        assert np.abs(_pixels(image) - _pixels(getattr(result, name))).max() <= 1, name


@pytest.mark.parametrize("family", list(FAMILIES))
def test_late_words_change_the_long_clip_image_and_pooled_vector_only(family, request):
    key, fixture = FAMILIES[family]
    folder = request.getfixturevalue(fixture)
    backend = _real_backend()
    first, second = (_generate(backend, family, folder, prompt=prompt) for prompt in (LATE_A, LATE_B))
    assert first.ok and second.ok, (first.message, second.message)
    assert not np.array_equal(_pixels(first.long_image), _pixels(second.long_image))

    # The pooled vector is CLIP's alone: Long-CLIP's reads the late words, stock CLIP's cannot.
    models = backend.models.get(ModelSpec(str(folder), "stretch", family=key))
    long_pooled, stock_pooled = (
        [encode(pipe, key, prompt, "")["pooled_prompt_embeds"] for prompt in (LATE_A, LATE_B)]
        for pipe in (models.long_clip, models.stock())
    )
    assert (long_pooled[0] - long_pooled[1]).abs().max().item() > 1e-4
    assert stock_pooled[0].equal(stock_pooled[1])


@pytest.mark.parametrize(
    ("family", "fixture", "detected"),
    [(FLUX, "tiny_sd3_folder", SD3), (SD3, "tiny_flux_folder", FLUX), (SD15, "tiny_flux_folder", FLUX),
     (SD3, "tiny_sd_folder", SD15)],
)
def test_wrong_family_is_one_line_before_loading(family, fixture, detected, request):
    folder = request.getfixturevalue(fixture)
    loads = []
    backend = DemoBackend(lambda spec: loads.append(spec))
    result = _generate(backend, family, folder)
    assert not result.ok and loads == []
    assert result.message == (
        f"Base model {folder} is {detected} (model_index.json), but Model family is {family}; "
        f"choose {detected} under Model family."
    )


def test_flux_says_the_negative_prompt_is_not_used(tiny_flux_folder):
    result = _generate(_real_backend(), FLUX, tiny_flux_folder, negative_prompt="blurry", steps=1, compare=False)
    assert result.ok, result.message
    assert result.notes == ("Flux reads no negative prompt (its guidance is distilled): it was not used.",)


def test_counter_says_what_t5_reads():
    backend = DemoBackend(lambda spec: None)
    assert "T5" not in backend.count(PROMPT, SD15)
    for family, length in ((SD3, 256), (FLUX, 512)):
        shown = backend.count(PROMPT, family)
        assert "These limits are CLIP's: T5 also reads the prompt, up to " f"{length} T5 tokens" in shown
        assert "<del class='clip-dropped'" in shown, "the 77-token cut is still shown: it is CLIP-L's"


def test_family_switch_swaps_defaults_and_keeps_custom_values():
    assert app._family_changed(FLUX, app.DEFAULT_BASE[SD15], 512, 512, 7.5) == (
        "black-forest-labs/FLUX.1-dev", 1024, 1024, 3.5,
    )
    assert app._family_changed(SD3, app.DEFAULT_BASE[FLUX], 1024, 1024, 3.5) == (
        "stabilityai/stable-diffusion-3-medium-diffusers", 1024, 1024, 7.0,
    )
    assert app._family_changed(SD3, "./my-model", 768, 768, 4.0) == ("./my-model", 768, 768, 4.0)


def _component(demo, elem_id):
    return next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id)


@pytest.mark.parametrize(("fixture", "family"), [("tiny_sd3_folder", SD3), ("tiny_flux_folder", FLUX)])
def test_page_opens_on_the_base_folders_family(fixture, family, request):
    folder = request.getfixturevalue(fixture)
    demo = build_demo(lambda spec: None, base=str(folder), long_clip="stretch")
    assert _component(demo, "family").value == family
    assert _component(demo, "guidance").value == app.DEFAULT_GUIDANCE[family]
    demo = build_demo(lambda spec: None, family="flux", long_clip="stretch")
    assert _component(demo, "base").value == "black-forest-labs/FLUX.1-dev"
    assert _component(demo, "width").value == 1024


def test_family_option(capsys):
    parser = argparse.ArgumentParser(prog="longclip")
    app.add_commands(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["demo", "--family", "flux"]).family == "flux"
    assert parser.parse_args(["demo"]).family is None
    for wrong in (["demo", "--family", "sd9"], ["demo", "--sdxl", "--family", "sd3"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(wrong)
        assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_gradio_client_flux_long_prompt_and_wrong_family(tiny_flux_folder, tiny_sd3_folder):
    """An API caller on a server launched on 127.0.0.1 with the real loader: two images for Flux, and the wrong-family
    sentence for an SD3 folder sent as Flux."""
    from gradio_client import Client
    from PIL import Image

    demo = build_demo(lambda spec: load_models(spec, device="cpu"), base=str(tiny_flux_folder), long_clip="stretch")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch_demo(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        inputs = dict(
            prompt=PROMPT, negative_prompt="", seed=7, steps=2, guidance=3.5, width=TINY_SIZE, height=TINY_SIZE,
            family=FLUX, base=str(tiny_flux_folder), long_clip="stretch", compare=True,
        )
        long_image, stock_image, status, seed = client.predict(*inputs.values(), api_name="/generate")
        assert "status ok" in status and "Long-CLIP and stock CLIP: seed 7, 2 steps" in status, status
        assert seed == 7
        # Image updates (value and label): the files the server wrote.
        assert long_image["label"] == "Long-CLIP (248 tokens) · seed 7"
        assert stock_image["label"] == "Stock CLIP (77 tokens) · seed 7"
        images = [Image.open(update["value"]) for update in (long_image, stock_image)]
        assert [image.size for image in images] == [(TINY_SIZE, TINY_SIZE)] * 2
        assert not np.array_equal(*(_pixels(image.convert("RGB")) for image in images))

        inputs["base"] = str(tiny_sd3_folder)
        _, _, status, _ = client.predict(*inputs.values(), api_name="/generate")
        assert "role='alert'" in status
        assert "is SD3 (model_index.json), but Model family is Flux; choose SD3 under Model family." in status
    finally:
        demo.close()
