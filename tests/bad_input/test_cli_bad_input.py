"""Bad input to the `longclip` command line: one table of arguments, each refused with exit 2 and one line.

Each case runs ``cli.main(argv)`` in-process, in an empty working folder, with tiny models (``testing.py``) where a
folder or file is needed; it expects exit status 2, exactly one line on stderr containing a phrase of the message, and
nothing written. Every case is refused before a pipeline is loaded.
"""

from __future__ import annotations

import io
import socket
import sys

import pytest
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from huggingface_hub import constants

from longclip_diffusion.checkpoints import save_comfy_file
from longclip_diffusion.cli import main
from longclip_diffusion.testing import clip_text_config, random_text_encoder, tiny_sd_components, tiny_sdxl_components

NO_NETWORK = "no network"  # no HF_HUB_OFFLINE and a Hub endpoint nothing listens on

CASES = [
    # (argv, phrase of the one-line message, conditions: "stdin:<text>" or NO_NETWORK)
    ([], "the following arguments are required: COMMAND", None),
    (["paint", "a cat"], "invalid choice: 'paint'", None),
    (["tokens", ""], "the prompt is empty", None),
    (["tokens", "   "], "the prompt is empty", None),
    (["tokens", "\n\t "], "the prompt is empty", None),
    (["tokens", "-"], "standard input is empty", "stdin:"),
    (["tokens", "-"], "standard input is empty", "stdin:  \n\n"),
    (["tokens", "a cat", "--limit", "0"], "argument --limit: expected a token limit ≥ 3", None),
    (["tokens", "a cat", "--limit", "-5"], "argument --limit", None),
    (["tokens", "a cat", "--limit", "many"], "argument --limit: expected a token limit", None),
    (["generate", "a cat", "--steps", "0"], "argument --steps: expected a whole number ≥ 1, got 0", None),
    (["generate", "a cat", "--steps", "-3"], "argument --steps", None),
    (["generate", "a cat", "--steps", "2.5"], "argument --steps", None),
    (["generate", "a cat", "--height", "-64"], "argument --height", None),
    (["generate", "a cat", "--width", "30"], "argument --width: expected a size in pixels, a positive multiple of 8", None),
    (["generate", "a cat", "--guidance-scale", "-1"], "argument --guidance-scale: expected a number ≥ 0", None),
    (["generate", "a cat", "--guidance-scale", "nan"], "argument --guidance-scale", None),
    (["generate", "a cat", "--seed", "-1"], "argument --seed", None),
    (["generate", "a cat", "--seed", str(2**64)], "argument --seed", None),
    (["generate", "a cat", "--family", "sd2"], "argument --family: invalid choice: 'sd2'", None),
    (["generate", "a cat", "-o", "out.xyz"], "-o/--output out.xyz: unknown image extension '.xyz'", None),
    (["generate", "a cat", "-o", "out"], "-o/--output out: no image extension", None),
    (["generate", "a cat", "-o", "{folder_png}"], "is a folder", None),
    (["generate", "a cat", "--base", "./my-sd15"], "--base: no such file or folder: ./my-sd15", None),
    (["generate", "a cat", "--base", "~/no-such-longclip-base"], "no such file or folder: ~/no-such-longclip-base", None),
    (["generate", "a cat", "--base", "not a repo!"], "neither an existing file or folder nor a Hub id", None),
    (["generate", "a cat", "--base", "{sd}", "--long-clip", "./missing.safetensors"],
     "--long-clip: no such file or folder: ./missing.safetensors", None),
    (["generate", "a cat", "--base", "{sdxl}", "--family", "sd15"], "is a model of the SDXL family (model_index.json)", None),
    (["generate", "a cat", "--base", "{sdxl}", "--family", "sd15"], "use --family sdxl", None),
    (["generate", "a cat", "--base", "{sd}", "--sdxl"], "use --family sd15", None),
    (["generate", "a cat", "--sdxl", "--family", "flux"], "--sdxl and --family flux disagree", None),
    (["generate", "a cat", "--base", "{sd}", "--long-clip", "{long_clip}", "--device", "toaster"],
     "--device toaster: not a torch device", None),
    (["generate", "a cat"], "stable-diffusion-v1-5/stable-diffusion-v1-5: could not reach the Hugging Face Hub", NO_NETWORK),
    (["generate", "a cat", "--base", "{sd}"], "--long-clip BeichenZhang/LongCLIP-L: could not reach the Hugging Face Hub",
     NO_NETWORK),
    (["convert", "BeichenZhang/LongCLIP-L", "out.safetensors"], "source BeichenZhang/LongCLIP-L: could not reach",
     NO_NETWORK),
    (["convert", "./missing.pt", "out.safetensors"], "source: no such file or folder: ./missing.pt", None),
    (["convert", "{long_clip}", "{existing_file}"], "already exists", None),
    (["convert", "{long_clip}", "{existing_folder}"], "already exists", None),
    (["convert", "{long_clip}", "out", "--to", "onnx"], "argument --to: invalid choice: 'onnx'", None),
    (["convert", "{not_a_checkpoint}", "out.safetensors"], "not_a_checkpoint.safetensors", None),
    (["stretch", "{sd}", "{existing_folder}", "--subfolder", "text_encoder"], "already exists", None),
    (["stretch", "{sd}", "out.safetensors", "--ratio", "1"], "argument --ratio: expected a whole number ≥ 2", None),
    (["stretch", "{sd}", "out.safetensors", "--keep", "-1"], "argument --keep", None),
    (["stretch", "{sd}", "out.safetensors", "--subfolder", "text_encoder", "--keep", "500"],
     "--keep must be between 0 and 75", None),
    (["stretch", "a/b/c", "out.safetensors"], "source: no such file or folder: a/b/c", None),
    (["stretch", "{sd}", "out", "--to", "openai"], "argument --to: invalid choice: 'openai'", None),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-bad-input")
    StableDiffusionPipeline(**tiny_sd_components(long_clip=False)).save_pretrained(root / "tiny-sd")
    StableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=False)).save_pretrained(root / "tiny-sdxl")
    save_comfy_file(random_text_encoder(clip_text_config(), long=True), root / "longclip.safetensors")
    (root / "not_a_checkpoint.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (root / "existing.safetensors").write_bytes(b"the user's file")
    (root / "existing-folder" / "text_encoder").mkdir(parents=True)  # a diffusers output goes to text_encoder/
    (root / "existing-folder" / "text_encoder" / "keep.txt").write_text("the user's encoder")
    (root / "folder.png").mkdir()
    return {
        "sd": root / "tiny-sd", "sdxl": root / "tiny-sdxl", "long_clip": root / "longclip.safetensors",
        "not_a_checkpoint": root / "not_a_checkpoint.safetensors", "existing_file": root / "existing.safetensors",
        "existing_folder": root / "existing-folder", "folder_png": root / "folder.png",
    }


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("argv, phrase, condition", CASES, ids=[" ".join(case[0])[:60] or "(none)" for case in CASES])
def test_bad_cli_input_exits_2_with_one_line(
    argv, phrase, condition, inputs, tmp_path, tmp_path_factory, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    argv = [arg.format(**inputs) for arg in argv]
    if condition == NO_NETWORK:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hub-cache")))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    elif condition and condition.startswith("stdin:"):
        monkeypatch.setattr(sys, "stdin", io.StringIO(condition.removeprefix("stdin:")))

    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert phrase in lines[0] and "error:" in lines[0]
    assert captured.out == ""
    assert not list(tmp_path.iterdir())  # nothing written
    assert (inputs["existing_file"]).read_bytes() == b"the user's file"
    assert [p.name for p in inputs["existing_folder"].rglob("*")] == ["text_encoder", "keep.txt"]
