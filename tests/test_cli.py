"""The `longclip` command line, end to end on tiny local models (no Hub)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from longclip_diffusion.checkpoints import load_text_encoder, save_comfy_file
from longclip_diffusion.cli import main
from longclip_diffusion.testing import clip_text_config, random_text_encoder, tiny_sd_components

LONG_PROMPT = "an old lighthouse keeper reading by lamplight, " * 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    StableDiffusionPipeline(**tiny_sd_components(long_clip=False)).save_pretrained(root / "tiny-sd")
    long_encoder = random_text_encoder(clip_text_config(), with_projection=True, seed=5, long=True)
    save_comfy_file(long_encoder, root / "longclip.safetensors")
    return root


def test_generate_end_to_end(models, tmp_path, capsys):
    output = tmp_path / "out" / "image.png"
    args = ["generate", LONG_PROMPT, "-n", "blurry", "--seed", "3", "--steps", "2", "--height", "32", "--width", "32",
            "--base", str(models / "tiny-sd"), "--long-clip", str(models / "longclip.safetensors"), "-o", str(output)]
    assert main(args) == 0
    image = np.asarray(Image.open(output))
    assert image.shape == (32, 32, 3)
    assert "seed 3" in capsys.readouterr().out
    assert main(args[:-1] + [str(tmp_path / "again.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "again.png")), image)  # the seed reproduces


def test_generate_with_stretch(models, tmp_path):
    args = ["generate", LONG_PROMPT, "--steps", "1", "--height", "32", "--width", "32",
            "--base", str(models / "tiny-sd"), "--long-clip", "stretch", "-o", str(tmp_path / "s.png")]
    assert main(args) == 0 and (tmp_path / "s.png").exists()


def test_convert_and_stretch(models, tmp_path, capsys):
    assert main(["convert", str(models / "longclip.safetensors"), str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "text_encoder" / "config.json").exists()
    assert main(["stretch", str(models / "tiny-sd"), str(tmp_path / "stretched.safetensors"),
                 "--subfolder", "text_encoder"]) == 0
    assert "77 → 248" in capsys.readouterr().out
    table = load_file(str(tmp_path / "stretched.safetensors"))["text_model.embeddings.position_embedding.weight"]
    original = load_text_encoder(models / "tiny-sd").embeddings.position_embedding.weight
    assert table.shape == (248, 32)
    torch.testing.assert_close(table[:20], original[:20])


def test_tokens_reports_what_77_tokens_drop(capsys):
    assert main(["tokens", "a cat on a mat " + "with many words " * 30 + "ZEBRA"]) == 0
    out = capsys.readouterr().out
    assert "tokens (a 77-token CLIP reads 75" in out and "drops:" in out and "ZEBRA" in out


def test_errors_exit_non_zero_with_one_line(tmp_path):
    (tmp_path / "foreign.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for args in (["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x.safetensors")],
                 ["convert", str(tmp_path / "foreign.safetensors"), str(tmp_path / "y")]):
        result = subprocess.run([sys.executable, "-m", "longclip_diffusion.cli", *args], capture_output=True, text=True)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr
        assert args[1] in result.stderr


@pytest.mark.parametrize("command", ["generate", "convert", "stretch", "tokens", "train", "eval", "demo"])
def test_every_command_has_help(command):
    result = subprocess.run([sys.executable, "-m", "longclip_diffusion.cli", command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: longclip " + command in result.stdout


def test_generate_sdxl_and_stretch_bigg(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from longclip_diffusion.testing import tiny_sdxl_components

    StableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=False)).save_pretrained(tmp_path / "tiny-sdxl")
    output = tmp_path / "sdxl.png"
    args = ["generate", LONG_PROMPT, "--sdxl", "--steps", "1", "--height", "32", "--width", "32",
            "--base", str(tmp_path / "tiny-sdxl"), "--long-clip", "stretch", "-o", str(output)]
    assert main(args) == 0
    assert np.asarray(Image.open(output)).shape == (32, 32, 3)

    assert main(["stretch", str(tmp_path / "tiny-sdxl"), str(tmp_path / "bigg-long"),
                 "--subfolder", "text_encoder_2", "--with-projection"]) == 0
    bigg = load_text_encoder(tmp_path / "bigg-long", with_projection=True)
    assert bigg.config.max_position_embeddings == 248 and bigg.config.hidden_act == "gelu"
