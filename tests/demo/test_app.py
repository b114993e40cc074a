"""The demo's callbacks with tiny random models: generation, caches, errors, command line."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from longclip_diffusion.demo import app
from longclip_diffusion.demo.app import SD15, DemoBackend, build_demo
from longclip_diffusion.demo.examples import EXAMPLES
from longclip_diffusion.demo.models import EmbeddingCache, ModelSpec

TINY_SIZE = 64  # pixels; the tiny VAE halves it
LONG_PROMPT = EXAMPLES[0][1]


def _generate(backend, **overrides):
    kwargs = dict(
        prompt=LONG_PROMPT, negative_prompt="blurry", seed=1234, steps=2, guidance=5.0,
        width=TINY_SIZE, height=TINY_SIZE, family=SD15, base="tiny", long_clip="stretch", compare=True,
    )
    kwargs.update(overrides)
    return backend.generate(**kwargs)


def _count_encodes(pipe):
    calls = []
    original = pipe.encode_prompt

    def counting(*args, **kwargs):
        prompt = kwargs.get("prompt", args[0] if args else None)
        if prompt is not None:  # __call__ also calls it with prompt=None when given prompt_embeds
            calls.append(prompt)
        return original(*args, **kwargs)

    pipe.encode_prompt = counting
    return calls


def test_generate_both_images_same_seed(tiny_loader):
    backend = DemoBackend(tiny_loader)
    progress = []
    result = _generate(backend, progress=lambda value, desc=None, **kw: progress.append((value, desc)))
    assert result.ok, result.message
    assert result.long_image.size == result.stock_image.size == (TINY_SIZE, TINY_SIZE)
    assert result.seed == 1234 and "seed 1234" in result.message
    # Different text encoders (248 vs 77 positions) condition the same UNet differently.
    assert not np.array_equal(np.asarray(result.long_image), np.asarray(result.stock_image))
    # Progress reached the end of both runs (2 steps each).
    assert (4, 4) in [value for value, _ in progress]
    assert any(desc and "stock CLIP: step 2/2" in desc for _, desc in progress)

    again = _generate(backend)
    assert np.array_equal(np.asarray(again.long_image), np.asarray(result.long_image)), "same seed, same image"
    other = _generate(backend, seed=99)
    assert not np.array_equal(np.asarray(other.long_image), np.asarray(result.long_image))


def test_compare_off_generates_long_clip_only(tiny_loader):
    result = _generate(DemoBackend(tiny_loader), compare=False)
    assert result.ok, result.message
    assert result.long_image is not None and result.stock_image is None


def test_models_load_once_and_rerolled_seed_does_not_reencode(tiny_loader):
    backend = DemoBackend(tiny_loader)
    assert _generate(backend).ok
    assert len(tiny_loader.calls) == 1
    models = backend.models.get(ModelSpec("tiny", "stretch"))
    long_calls, stock_calls = _count_encodes(models.long_clip), _count_encodes(models.stock())

    for seed in (1, 2, 3):
        result = _generate(backend, seed=seed, steps=1)
        assert result.ok and "prompt embeddings from cache" in result.message
    assert long_calls == [] and stock_calls == []
    assert len(tiny_loader.calls) == 1, "models are cached"

    assert _generate(backend, prompt="a small red boat").ok
    assert long_calls == ["a small red boat"] and stock_calls == ["a small red boat"]
    assert _generate(backend, prompt="a small red boat", negative_prompt="text").ok
    assert len(long_calls) == 2, "the negative prompt is part of the key"


def test_embedding_cache_is_bounded_lru():
    cache = EmbeddingCache(max_entries=2)
    computed = []

    def value(key):
        return lambda: computed.append(key) or {"key": key}

    for key in ("a", "b", "a", "c", "a", "b"):
        cache.get(key, value(key))
    assert computed == ["a", "b", "c", "b"]  # "b" was evicted by "c"; "a" stayed as most recent
    assert len(cache) == 2


def test_switching_model_loads_the_new_one(tiny_loader):
    backend = DemoBackend(tiny_loader)
    assert _generate(backend).ok
    assert _generate(backend, long_clip="other-stretch-spec").ok
    assert [spec.long_clip for spec in tiny_loader.calls] == ["stretch", "other-stretch-spec"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"prompt": "   "}, "Type a prompt"),
        ({"width": 100}, "multiples of 8"),
        ({"height": 4096}, "Height must be a whole number from 64 to 2048"),
        ({"steps": 0}, "Steps must be a whole number"),
        ({"seed": -5}, "Seed must be a whole number"),
        ({"guidance": "lots"}, "Guidance must be a number"),
        ({"base": ""}, "Choose a base model"),
        ({"family": "SD 9"}, "Unknown model family"),
        ({"base": "no/such-model"}, "Could not load the model `no/such-model` with Long-CLIP `stretch`"),
    ],
)
def test_errors_become_messages(tiny_loader, overrides, expected):
    backend = DemoBackend(tiny_loader)
    result = _generate(backend, **overrides)
    assert not result.ok
    assert result.long_image is None and result.stock_image is None
    assert expected in result.message
    assert "Traceback" not in result.message
    assert "role='alert'" in result.status_html
    # The backend still works afterwards.
    assert _generate(backend, steps=1).ok


def test_out_of_memory_and_unexpected_errors(tiny_loader, monkeypatch):
    backend = DemoBackend(tiny_loader)

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(DemoBackend, "_run", oom)
    result = _generate(backend)
    assert not result.ok and result.message.startswith("Out of memory.")

    monkeypatch.setattr(DemoBackend, "_run", lambda *a, **k: {}["boom"])
    result = _generate(backend)
    assert not result.ok and result.message == "Generation failed (KeyError): 'boom'"


def test_status_html_escapes_messages(tiny_loader):
    result = _generate(DemoBackend(tiny_loader), base="<script>x</script>")
    assert "<script>" not in result.status_html and "&lt;script&gt;" in result.status_html


def test_empty_seed_is_randomised(tiny_loader):
    result = _generate(DemoBackend(tiny_loader), seed=None, steps=1, compare=False)
    assert result.ok and 0 <= result.seed <= app.MAX_SEED


def test_default_loader_reads_a_local_folder_offline(tiny_sd_folder):
    """The real loader: Long-CLIP pipeline from a local folder, stock pipeline sharing its UNet."""
    from longclip_diffusion.demo.models import load_models

    models = load_models(ModelSpec(str(tiny_sd_folder), "stretch"), device="cpu")
    stock = models.stock()
    assert stock.unet is models.long_clip.unet and stock.vae is models.long_clip.vae
    assert stock.scheduler is not models.long_clip.scheduler
    assert stock.tokenizer.model_max_length == 77
    assert models.long_clip.tokenizer.model_max_length == 248
    assert type(stock).__name__ == "StableDiffusionPipeline"

    backend = DemoBackend(lambda spec: load_models(spec, device="cpu"))
    result = _generate(backend, base=str(tiny_sd_folder))
    assert result.ok, result.message
    assert result.long_image.size == (TINY_SIZE, TINY_SIZE)


def test_stock_side_refuses_a_base_that_is_already_long_clip(tmp_path):
    """A saved Long-CLIP pipeline as base would make the "stock" image a Long-CLIP one: the page says so instead."""
    from longclip_diffusion.demo.models import load_models
    from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline
    from longclip_diffusion.testing import tiny_sd_components

    LongCLIPStableDiffusionPipeline(**tiny_sd_components(long_clip=True)).save_pretrained(tmp_path)
    backend = DemoBackend(lambda spec: load_models(spec, device="cpu"))
    result = _generate(backend, base=str(tmp_path), long_clip="none", steps=1)
    assert not result.ok and "already holds a long text encoder (248 positions)" in result.message, result.message
    assert _generate(backend, base=str(tmp_path), long_clip="none", steps=1, compare=False).ok


def test_build_demo_wires_queue_and_events(tiny_loader):
    demo = build_demo(tiny_loader, base="tiny", long_clip="stretch")
    assert demo.backend.models.loader is tiny_loader
    assert tiny_loader.calls == [], "nothing loads before the first Generate"
    generate = [fn for fn in demo.fns.values() if fn.api_name == "generate"]
    assert len(generate) == 1 and generate[0].concurrency_limit == 1
    assert demo._queue.max_size == 16


def test_demo_command_line():
    parser = argparse.ArgumentParser(prog="longclip")
    commands = parser.add_subparsers(dest="command", required=True)
    app.add_commands(commands)

    args = parser.parse_args(["demo"])
    assert (args.host, args.port, args.share, args.sdxl) == ("127.0.0.1", None, False, False)
    assert args.handler is app.run_demo
    args = parser.parse_args(
        ["demo", "--host", "0.0.0.0", "--port", "7999", "--share", "--sdxl", "--base", "./sdxl", "--long-clip", "stretch"]
    )
    assert (args.host, args.port, args.share, args.sdxl, args.base, args.long_clip) == (
        "0.0.0.0", 7999, True, True, "./sdxl", "stretch",
    )


def test_core_cli_registers_demo():
    from longclip_diffusion.cli import build_parser

    args = build_parser().parse_args(["demo", "--port", "7001"])
    assert args.handler is app.run_demo and args.port == 7001 and args.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("offline", "not available locally and the Hugging Face Hub could not be reached"),
        ("oom", "Out of memory."),
        ("missing", "Could not load the model `some/model` with Long-CLIP `stretch`. Check that"),
    ],
)
def test_loading_errors_are_explained(error, expected):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def loader(spec):
        if error == "offline":
            raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic has been disabled.")
        if error == "oom":
            raise MemoryError("Cannot allocate 6.9 GiB")
        raise FileNotFoundError("model_index.json")

    result = _generate(DemoBackend(loader), base="some/model")
    assert not result.ok and expected in result.message, result.message


def test_default_loader_sdxl_from_a_local_folder(tiny_sdxl_folder):
    """SDXL: Long-CLIP SDXL pipeline and a stock SDXL pipeline sharing its UNet; both generate."""
    from longclip_diffusion.demo.app import SDXL
    from longclip_diffusion.demo.models import load_models

    backend = DemoBackend(lambda spec: load_models(spec, device="cpu"))
    result = _generate(backend, base=str(tiny_sdxl_folder), family=SDXL, guidance=3.0)
    assert result.ok, result.message
    assert result.long_image.size == result.stock_image.size == (TINY_SIZE, TINY_SIZE)
    models = backend.models.get(ModelSpec(str(tiny_sdxl_folder), "stretch", family="sdxl"))
    stock = models.stock()
    assert type(models.long_clip).__name__ == "LongCLIPStableDiffusionXLPipeline"
    assert type(stock).__name__ == "StableDiffusionXLPipeline" and stock.unet is models.long_clip.unet
    # Re-rolling the seed reuses the four SDXL embeddings.
    calls = _count_encodes(models.long_clip)
    assert _generate(backend, base=str(tiny_sdxl_folder), family=SDXL, seed=7, steps=1).ok
    assert calls == []


def test_concurrent_visitors_do_not_collide(tiny_loader):
    """Two requests at once (as with a raised queue limit) give the same images as one after the other.

    Different step counts: a scheduler shared between two runs at once would mix their timesteps.
    """
    from concurrent.futures import ThreadPoolExecutor

    backend = DemoBackend(tiny_loader)
    requests = {5: 2, 6: 5}  # seed: steps
    expected = {seed: _generate(backend, seed=seed, steps=steps) for seed, steps in requests.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {seed: pool.submit(_generate, backend, seed=seed, steps=steps) for seed, steps in requests.items()}
        results = {seed: future.result(timeout=300) for seed, future in futures.items()}
    for seed, result in results.items():
        assert result.ok, result.message
        for name in ("long_image", "stock_image"):
            assert np.array_equal(np.asarray(getattr(result, name)), np.asarray(getattr(expected[seed], name)))
    assert len(tiny_loader.calls) == 1


def test_hub_id_offline_is_explained_by_the_real_loader(monkeypatch):
    """HF_HUB_OFFLINE=1 (as in every test) and an uncached Hub id: a message, no network, no traceback."""
    import huggingface_hub.constants

    from longclip_diffusion.demo.models import load_models

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    backend = DemoBackend(lambda spec: load_models(spec, device="cpu"))
    result = _generate(backend, base="nobody-here/no-such-model")
    assert not result.ok
    assert "`nobody-here/no-such-model`" in result.message
    assert "not available locally and the Hugging Face Hub could not be reached" in result.message


def test_gradio_progress_object_is_used(tiny_loader):
    """An idle gr.Progress has len() 0, so it is falsy: the backend must still report to it."""
    import gradio as gr

    class Recording(gr.Progress):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __call__(self, progress, desc=None, total=None, unit="steps", _tqdm=None):
            self.calls.append((progress, desc))

    progress = Recording()
    assert not progress
    assert _generate(DemoBackend(tiny_loader), steps=1, compare=False, progress=progress).ok
    assert ((1, 1), "Long-CLIP: step 1/1") in progress.calls


def _wrapped_like_diffusers(cause: BaseException) -> OSError:
    """diffusers raises a plain OSError while handling the Hub client's error (``__context__``)."""
    try:
        raise cause
    except BaseException:
        try:
            raise OSError("Cannot load model some/model: the model is not fully cached locally.")
        except OSError as error:
            return error


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        ("httpx2.ConnectError", "hub"),  # huggingface_hub 2.x: no network
        ("httpx2.ConnectTimeout", "hub"),
        ("huggingface_hub.errors.OfflineModeIsEnabled", "hub"),  # HF_HUB_OFFLINE=1, not cached
        ("huggingface_hub.errors.LocalEntryNotFoundError", "hub"),
        ("builtins.TimeoutError", "hub"),
        ("longclip_diffusion.sources.HubUnavailableError", "own"),  # its own sentence, as the CLI prints it
        ("builtins.PermissionError", "other"),  # a message saying "offline mode" does not make it a Hub error
    ],
)
def test_hub_errors_are_recognised_by_type_through_wrapping(cause, expected):
    import importlib

    from longclip_diffusion.demo.errors import ModelLoadError, friendly_error

    module, name = cause.rsplit(".", 1)
    try:
        error_type = getattr(importlib.import_module(module), name)
    except ImportError:
        pytest.skip(f"{module} is not installed")
    try:
        raise ModelLoadError("some/model", "stretch") from _wrapped_like_diffusers(error_type("offline mode"))
    except ModelLoadError as error:
        message = friendly_error(error)
    if expected == "own":
        assert message == "offline mode"
    else:
        assert ("the Hugging Face Hub could not be reached" in message) is (expected == "hub"), message
        assert message.startswith("Could not load the model `some/model` with Long-CLIP `stretch`")
    assert "\n" not in message
