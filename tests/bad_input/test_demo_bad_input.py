"""Bad input to the demo: huge prompts, wrongly typed values, model sources that are missing, refused or unreachable.

One table: each case names its surface — ``backend`` (``DemoBackend.generate``, what the page's button calls),
``api`` (``gradio_client`` against a server launched on 127.0.0.1, as an API caller sends it), ``counter`` (the live
token counter) — with ``allowed`` for a page that loads only the operator's allow-list, and expects either an error
(the exact phrase the visitor sees in the status line) or a run that worked with a note. Nothing here needs network.
"""

from __future__ import annotations

import html
import json
import os
import socket

import pytest

from longclip_diffusion.demo.access import AllowedModels, is_local_only
from longclip_diffusion.demo.app import SD15, SDXL, DemoBackend, build_demo, launch_demo
from longclip_diffusion.demo.models import LoadedModels
from longclip_diffusion.demo.tokens import MAX_PROMPT_CHARS

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TINY_SIZE = 64
HUGE_PROMPT = "a red fox " * 800_000  # 8 MB, the size that held the lock for 46 s
LONG_PROMPT = " ".join(f"word{i}" for i in range(400))  # ~1,200 tokens, under the character cap
ALLOWED_HUB_ID = "tiny"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_loader(spec):
    """Tiny random SD 1.x pipelines for any spec (the checks under test run before a loader is called)."""
    from diffusers import StableDiffusionPipeline

    from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline
    from longclip_diffusion.testing import tiny_sd_components

    long_pipe = LongCLIPStableDiffusionPipeline(**tiny_sd_components(long_clip=True))
    stock = StableDiffusionPipeline(**dict(tiny_sd_components(long_clip=False), unet=long_pipe.unet, vae=long_pipe.vae))
    for pipe in (long_pipe, stock):
        pipe.set_progress_bar_config(disable=True)
    return LoadedModels(long_pipe, stock=stock)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Folders the cases name: an allowed models folder (with a file and a way out), SD 1.5, SDXL, SD3, Flux bases."""
    root = tmp_path_factory.mktemp("demo-bad-input")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "longclip-L.safetensors").write_bytes(b"not read: the loader is tiny")
    (allowed / "escape").symlink_to("/etc")
    (root / "outside").mkdir()
    for name, class_name in (("sd15", "StableDiffusionPipeline"), ("sdxl", "StableDiffusionXLPipeline"),
                             ("sd3", "StableDiffusion3Pipeline"), ("flux", "FluxPipeline")):
        (root / name).mkdir()
        (root / name / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return {"root": str(root), "allowed": str(allowed)}


@pytest.fixture(scope="module")
def api(places):
    """The page on 127.0.0.1 with tiny models, and one restricted to an allow-list, both driven by gradio_client."""
    from gradio_client import Client

    clients, demos = {}, []
    for name, allowed in (("open", None), ("allowed", [ALLOWED_HUB_ID, places["allowed"]])):
        demo = build_demo(tiny_loader, base=ALLOWED_HUB_ID, long_clip="stretch", allowed_models=allowed)
        port = _free_port()
        launch_demo(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        demos.append(demo)
        clients[name] = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield clients
    for demo in demos:
        demo.close()


def refused(field: str, allowed: str) -> str:
    return (
        f"{field}: this server loads only the models its operator allowed ({ALLOWED_HUB_ID}, {allowed}; "
        '"stretch" or "none" for the Long-CLIP checkpoint). Pick one of them; the operator adds others with '
        "--allow-model."
    )


BASE_REFUSED = lambda p: refused("Base model", p["allowed"])  # noqa: E731
LONG_CLIP_REFUSED = lambda p: refused("Long-CLIP checkpoint", p["allowed"])  # noqa: E731

# (case, surface, inputs — a callable of the places for paths —, environment, expected: ("error"|"ok", phrase))
CASES = [
    # Prompts
    ("empty prompt", "backend", {"prompt": ""}, {}, ("error", "Type a prompt first.")),
    ("whitespace prompt", "backend", {"prompt": " \n\t "}, {}, ("error", "Type a prompt first.")),
    ("prompt not text", "backend", {"prompt": ["a", "cat"]}, {}, ("error", "Prompt must be text, got list ['a', 'cat'].")),
    ("8 MB prompt is cut with a note", "backend", {"prompt": HUGE_PROMPT}, {},
     ("ok", f"The prompt is 8,000,000 characters; only the first {MAX_PROMPT_CHARS:,} are read")),
    ("8 MB negative prompt is cut with a note", "backend", {"negative_prompt": HUGE_PROMPT}, {},
     ("ok", "The negative prompt is 8,000,000 characters; only the first")),
    ("over 248 tokens: note of what Long-CLIP did not read", "backend", {"prompt": LONG_PROMPT}, {},
     ("ok", "Long-CLIP reads the first 248, so it did not read: “word")),
    ("8 MB prompt in the counter", "counter", {"prompt": HUGE_PROMPT}, {},
     ("ok", f"only the first {MAX_PROMPT_CHARS:,} are read")),
    # Wrongly typed or out-of-range values
    ("seed text", "backend", {"seed": "abc"}, {}, ("error", "Seed must be a number, got 'abc'.")),
    ("seed negative", "backend", {"seed": -1}, {}, ("error", "Seed must be a whole number from 0 to 4294967295, got -1.")),
    ("seed fraction", "backend", {"seed": 1.5}, {}, ("error", "Seed must be a whole number from 0 to 4294967295")),
    ("seed NaN", "backend", {"seed": float("nan")}, {}, ("error", "Seed must be a whole number from 0 to 4294967295")),
    ("steps as text", "backend", {"steps": "ten"}, {}, ("error", "Steps must be a number, got 'ten'.")),
    ("steps zero", "backend", {"steps": 0}, {}, ("error", "Steps must be a whole number from 1 to 150, got 0.")),
    ("negative width", "backend", {"width": -64}, {}, ("error", "Width must be a whole number from 64 to 2048, got -64.")),
    ("height not a multiple of 8", "backend", {"height": 100}, {}, ("error", "must be multiples of 8, got 64×100.")),
    ("guidance text", "backend", {"guidance": "lots"}, {}, ("error", "Guidance must be a number, got 'lots'.")),
    ("guidance negative", "backend", {"guidance": -1}, {}, ("error", "Guidance must be from 0 to 30, got -1.")),
    ("unknown family", "backend", {"family": "SD 9"}, {}, ("error", "Unknown model family 'SD 9': choose SD 1.5, SDXL, SD3 or Flux.")),
    ("compare not a bool", "backend", {"compare": "yes"}, {}, ("error", "Compare must be true or false, got 'yes'.")),
    ("API: seed text", "api", {"seed": "abc"}, {}, ("error", "Seed must be a number, got 'abc'.")),
    ("API: steps as text", "api", {"steps": "10 steps"}, {}, ("error", "Steps must be a number, got '10 steps'.")),
    ("API: negative size", "api", {"width": -512}, {}, ("error", "Width must be a whole number from 64 to 2048, got -512.")),
    ("API: family a number", "api", {"family": 3}, {}, ("error", "Unknown model family 3: choose SD 1.5, SDXL, SD3 or Flux.")),
    ("API: empty prompt", "api", {"prompt": ""}, {}, ("error", "Type a prompt first.")),
    ("API: 8 MB prompt is cut with a note", "api", {"prompt": HUGE_PROMPT}, {},
     ("ok", f"The prompt is 8,000,000 characters; only the first {MAX_PROMPT_CHARS:,} are read")),
    # Model sources (served on 127.0.0.1: any source, checked before loading)
    ("missing base path", "backend", {"base": "./no-such-model"}, {},
     ("error", "Base model: no such file or folder: ./no-such-model (check the path, or give a Hub id")),
    ("missing Long-CLIP file", "backend", {"long_clip": "/nowhere/longclip-L.safetensors"}, {},
     ("error", "Long-CLIP checkpoint: no such file or folder: /nowhere/longclip-L.safetensors")),
    ("neither path nor Hub id", "backend", {"base": "not a model!"}, {},
     ("error", "Base model: 'not a model!' is neither an existing file or folder nor a Hub id")),
    ("unreachable Hub id: fast, one line", "backend", {"base": "someone/some-model"},
     {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:{closed_port}",
      "LONGCLIP_HUB_TIMEOUT": "3"},
     ("error", "Base model someone/some-model: could not reach the Hugging Face Hub (http://127.0.0.1:")),
    ("uncached Hub id offline (real loader)", "backend-real", {"base": "nobody-here/no-such-model"}, {},
     ("error", "not available locally and the Hugging Face Hub could not be reached")),
    ("SDXL base with SD 1.5 picked", "backend", {"base": lambda p: p["root"] + "/sdxl"}, {},
     ("error", "is SDXL (model_index.json), but Model family is SD 1.5; choose SDXL under Model family.")),
    ("SD 1.5 base with SDXL picked", "backend", {"base": lambda p: p["root"] + "/sd15", "family": SDXL}, {},
     ("error", "is SD 1.5 (model_index.json), but Model family is SDXL; choose SD 1.5 under Model family.")),
    ("SD3 base", "backend", {"base": lambda p: p["root"] + "/sd3"}, {},
     ("error", "is SD3 (model_index.json), but Model family is SD 1.5; choose SD3 under Model family.")),
    ("Flux base with SD3 picked", "backend", {"base": lambda p: p["root"] + "/flux", "family": "SD3"}, {},
     ("error", "is Flux (model_index.json), but Model family is SD3; choose Flux under Model family.")),
    # Served beyond 127.0.0.1: the operator's allow-list, one message for every refused value
    ("allowed: /etc/shadow (exists)", "allowed", {"base": "/etc/shadow"}, {}, ("error", BASE_REFUSED)),
    ("allowed: missing path", "allowed", {"base": "/etc/no-such-file"}, {}, ("error", BASE_REFUSED)),
    ("allowed: /root folder", "allowed", {"base": "/root"}, {}, ("error", BASE_REFUSED)),
    ("allowed: relative escape", "allowed", {"base": "../../../../etc/passwd"}, {}, ("error", BASE_REFUSED)),
    ("allowed: .. out of the allowed folder", "allowed", {"base": lambda p: p["allowed"] + "/../outside"}, {},
     ("error", BASE_REFUSED)),
    ("allowed: symlink out of the allowed folder", "allowed", {"base": lambda p: p["allowed"] + "/escape/passwd"}, {},
     ("error", BASE_REFUSED)),
    ("allowed: Hub id not on the list", "allowed", {"base": "someone/other-model"}, {}, ("error", BASE_REFUSED)),
    ("allowed: Long-CLIP path outside", "allowed", {"long_clip": "/etc/passwd"}, {}, ("error", LONG_CLIP_REFUSED)),
    ("allowed: file inside the allowed folder", "allowed",
     {"long_clip": lambda p: p["allowed"] + "/longclip-L.safetensors"}, {}, ("ok", "Long-CLIP: seed 1, 1 steps")),
    ("allowed: stretch", "allowed", {"long_clip": "stretch"}, {}, ("ok", "Long-CLIP: seed 1, 1 steps")),
    ("API allowed: /etc/shadow", "api-allowed", {"base": "/etc/shadow"}, {}, ("error", BASE_REFUSED)),
    ("API allowed: missing path", "api-allowed", {"base": "/no/such/folder"}, {}, ("error", BASE_REFUSED)),
]


def _inputs(overrides: dict, places: dict) -> dict:
    inputs = dict(
        prompt="a red fox in the snow", negative_prompt="", seed=1, steps=1, guidance=5.0, width=TINY_SIZE,
        height=TINY_SIZE, family=SD15, base=ALLOWED_HUB_ID, long_clip="stretch", compare=False,
    )
    inputs.update({key: value(places) if callable(value) else value for key, value in overrides.items()})
    return inputs


def _run(surface: str, inputs: dict, places: dict, api) -> tuple[bool, str]:
    """(worked, the text the visitor sees) for ``inputs`` sent through ``surface``."""
    if surface == "counter":
        return True, html.unescape(DemoBackend(tiny_loader).count(inputs["prompt"]))
    if surface.startswith("api"):
        client = api["allowed" if surface == "api-allowed" else "open"]
        outputs = client.predict(*inputs.values(), api_name="/generate")
        status = outputs[2]
        return "status ok" in status, html.unescape(status)
    if surface == "backend-real":
        from longclip_diffusion.demo.models import load_models

        backend = DemoBackend(lambda spec: load_models(spec, device="cpu"))
    else:
        allowed = AllowedModels([ALLOWED_HUB_ID, places["allowed"]], restricted=surface == "allowed")
        backend = DemoBackend(tiny_loader, allowed_models=allowed)
    result = backend.generate(**inputs)
    assert "Traceback" not in result.message and "\n" not in result.message
    return result.ok, html.unescape(result.status_html)


@pytest.mark.parametrize(("surface", "overrides", "environment", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_demo_bad_input(surface, overrides, environment, expected, places, request, monkeypatch):
    kind, phrase = expected
    phrase = phrase(places) if callable(phrase) else phrase
    closed_port = _free_port()  # nothing listens there: the connection is refused at once
    for name, value in environment.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value.format(closed_port=closed_port))
    api = request.getfixturevalue("api") if surface.startswith("api") else None
    worked, shown = _run(surface, _inputs(overrides, places), places, api)
    assert phrase in shown, shown
    assert worked == (kind == "ok"), shown


def test_every_refused_path_gets_the_same_message(places):
    """Existing, missing, file, folder, escaping: a visitor learns nothing about the server's files."""
    allowed = AllowedModels([ALLOWED_HUB_ID, places["allowed"]], restricted=True)
    backend = DemoBackend(tiny_loader, allowed_models=allowed)
    values = ["/etc/shadow", "/etc/nothing-here", "/root", "/root/.ssh/id_rsa", "~/.bashrc", places["allowed"] + "/.."]
    messages = {backend.generate("a fox", base=value, long_clip="stretch").message for value in values}
    assert messages == {BASE_REFUSED(places)}


def test_served_beyond_localhost_loads_only_the_allowed_models(monkeypatch):
    """--host 0.0.0.0 / --share restrict the page to its own models (and --allow-model); 127.0.0.1 does not."""
    assert is_local_only("127.0.0.1", False) and is_local_only(None, False)
    assert not is_local_only("0.0.0.0", False) and not is_local_only("127.0.0.1", True)

    for host, share, restricted in (("127.0.0.1", False, False), ("0.0.0.0", False, True), ("127.0.0.1", True, True)):
        demo = build_demo(tiny_loader, base=ALLOWED_HUB_ID, long_clip="stretch")
        monkeypatch.setattr(demo, "launch", lambda **kwargs: None)  # no server: only what launch_demo decides
        launch_demo(demo, host=host, share=share)
        assert demo.backend.allowed.restricted is restricted
        assert demo.backend.allowed.permits(ALLOWED_HUB_ID) and demo.backend.allowed.permits("stretch")
        assert demo.backend.allowed.permits("/etc/shadow") is not restricted


def test_allow_model_option():
    import argparse

    from longclip_diffusion.demo.app import add_commands

    parser = argparse.ArgumentParser(prog="longclip")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--host", "0.0.0.0", "--allow-model", "./models", "--allow-model", "a/b"])
    assert args.allow_model == ["./models", "a/b"]
    assert parser.parse_args(["demo"]).allow_model is None
