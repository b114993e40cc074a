"""The `longclip` command line, end to end on tiny local models (no Hub)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

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


def test_stretched_folder_reads_the_same_in_stock_diffusers(models, tmp_path):
    """`longclip stretch` into a diffusers folder pads as the base's own tokenizer (SD: end-of-text), so stock
    diffusers given that folder encodes like our pipeline's `long_clip="stretch"` (issue 11 §2)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline

    assert main(["stretch", str(models / "tiny-sd"), str(tmp_path / "kps"), "--subfolder", "text_encoder"]) == 0
    stock = StableDiffusionPipeline.from_pretrained(
        models / "tiny-sd",
        text_encoder=CLIPTextModel.from_pretrained(tmp_path / "kps" / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(tmp_path / "kps" / "tokenizer"),
    )
    ours = LongCLIPStableDiffusionPipeline.from_pretrained(models / "tiny-sd", long_clip="stretch")
    assert stock.tokenizer.pad_token_id == ours.config.long_clip_pad_token_id == 49407
    prompt = LONG_PROMPT + "a zebra in the doorway"
    stock_embeds, _ = stock.encode_prompt(prompt, "cpu", 1, False)
    ours_embeds, _ = ours.encode_prompt(prompt, "cpu", 1, False)
    assert stock_embeds.shape == (1, 248, 32)
    torch.testing.assert_close(stock_embeds, ours_embeds, atol=1e-5, rtol=0)


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


# --------------------------------------------------------------------------------------------------------------------
# Start-up, sources and families (issue 14 §3–§5)


def test_parser_and_tokens_import_no_model_code():
    code = (
        "import sys\n"
        "from longclip_diffusion import cli\n"
        "cli.build_parser()\n"
        "assert cli.main(['tokens', 'a cat on a mat']) == 0\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'diffusers', 'gradio') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "5 tokens" in result.stdout


@pytest.mark.parametrize(
    "prompt",
    ["a cat", LONG_PROMPT * 3, "(red:1.3) [blue] \\(literal\\) ((x)) café naïve 東京 🙂 it's 3.14",
     "<|endoftext|> inside <|startoftext|>", "  tabs\tand\nnew lines  ", "word " * 300],
)
def test_tokens_counts_as_the_pipeline_tokenizer(prompt):
    """`longclip tokens` counts with the torch-free BPE; the pipelines tokenize with transformers' CLIPTokenizer."""
    from longclip_diffusion.prompts import count_tokens
    from longclip_diffusion.tokenizer import load_tokenizer

    pipeline_tokenizer = load_tokenizer()
    for limit in (77, 248):
        assert count_tokens(prompt, limit=limit) == count_tokens(prompt, limit=limit, tokenizer=pipeline_tokenizer)


def test_generate_help_shows_defaults_and_no_empty_ones():
    for command in ("generate", "convert", "stretch", "tokens"):
        result = subprocess.run([sys.executable, "-m", "longclip_diffusion.cli", command, "--help"],
                                capture_output=True, text=True)
        text = " ".join(result.stdout.split())  # argparse wraps lines
        assert result.returncode == 0
        assert "(default: None)" not in text and "(default: False)" not in text and "(default: )" not in text
        if command == "generate":
            options = text.split("options:")[1]
            for flag, default in (("--seed", "0"), ("--steps", "30"), ("--guidance-scale", "7.5")):
                metavar = flag.lstrip("-").replace("-", "_").upper()
                described = re.search(rf"{flag} {metavar} ((?:(?! --?[a-z]).)*)", options).group(1)
                assert described.rstrip().endswith(f"(default: {default})"), described


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def online_without_network(monkeypatch, tmp_path_factory):
    """No HF_HUB_OFFLINE, a Hub endpoint nothing listens on, and an empty local cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hub-cache")))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")


@pytest.mark.parametrize(
    "args, repo_id",
    [(["generate", "a cat"], "stable-diffusion-v1-5/stable-diffusion-v1-5"),
     (["generate", "a cat", "--sdxl"], "stabilityai/stable-diffusion-xl-base-1.0"),
     (["convert", "BeichenZhang/LongCLIP-L", "out.safetensors"], "BeichenZhang/LongCLIP-L")],
)
def test_hub_id_without_network_fails_fast_in_one_line(online_without_network, tmp_path, monkeypatch, capsys, args,
                                                         repo_id):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert repo_id in error and "could not reach the Hugging Face Hub" in error and "HF_HUB_OFFLINE=1" in error
    assert not list(tmp_path.iterdir())  # nothing written


def test_unreachable_hub_is_fine_for_a_cached_repo(online_without_network, monkeypatch):
    """huggingface_hub falls back to a cached snapshot at once, so a cached Hub id is not refused."""
    from huggingface_hub import constants

    from longclip_diffusion.sources import HubUnavailableError, resolve_source

    with pytest.raises(HubUnavailableError, match="owner/model"):
        resolve_source("owner/model")
    snapshot = Path(constants.HF_HUB_CACHE) / "models--owner--model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    assert resolve_source("owner/model") == "owner/model"


def test_hub_probe_gives_up_after_the_configured_wait(monkeypatch):
    """A Hub that accepts the connection but never answers: the probe stops at LONGCLIP_HUB_TIMEOUT."""
    from longclip_diffusion.sources import HubUnavailableError, check_hub_reachable

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("LONGCLIP_HUB_TIMEOUT", "0.3")
        with pytest.raises(HubUnavailableError, match="within 0.3 s"):
            check_hub_reachable("owner/model")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode: the cache decides, nothing is probed
        check_hub_reachable("owner/model")


def test_resolve_source(tmp_path, monkeypatch):
    from longclip_diffusion.sources import resolve_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-sd15").mkdir()
    assert resolve_source("my-sd15") == tmp_path / "my-sd15" or resolve_source("my-sd15").resolve() == tmp_path / "my-sd15"
    assert resolve_source("owner/model") == "owner/model"  # HF_HUB_OFFLINE=1 (conftest): no probe
    for missing in ("./my-sd14", "~/nowhere-longclip", "models/sd/15", "weights.safetensors", "owner/model.pt"):
        with pytest.raises(FileNotFoundError, match=f"no such file or folder: {re.escape(missing)}"):
            resolve_source(missing)
    with pytest.raises(ValueError, match="neither an existing file or folder nor a Hub id"):
        resolve_source("a cat--dog")


def _write_index(folder, class_name):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, "_diffusers_version": "0.42.1"}))
    return folder


def test_detect_family(models, tmp_path):
    from longclip_diffusion.sources import detect_family

    assert detect_family(models / "tiny-sd") == "sd15"
    cases = {"StableDiffusionXLPipeline": "sdxl", "LongCLIPStableDiffusionXLPipeline": "sdxl",
             "StableDiffusionXLImg2ImgPipeline": "sdxl", "LongCLIPStableDiffusionPipeline": "sd15",
             "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "KandinskyPipeline": None}
    for class_name, family in cases.items():
        assert detect_family(_write_index(tmp_path / class_name, class_name)) == family
    assert detect_family(tmp_path / "nothing-here") is None
    assert detect_family("owner/model") is None


def test_generate_reads_the_family_from_the_folder(tmp_path):
    """An SDXL folder without --sdxl runs the SDXL pipeline (it crashed with AttributeError on NoneType)."""
    from diffusers import StableDiffusionXLPipeline

    from longclip_diffusion.testing import tiny_sdxl_components

    StableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=False)).save_pretrained(tmp_path / "tiny-sdxl")
    output = tmp_path / "auto.png"
    assert main(["generate", "a lighthouse", "--steps", "1", "--height", "32", "--width", "32",
                 "--base", str(tmp_path / "tiny-sdxl"), "--long-clip", "stretch", "-o", str(output)]) == 0
    assert np.asarray(Image.open(output)).shape == (32, 32, 3)


def test_family_of_a_cached_hub_base(tmp_path, monkeypatch, capsys):
    """A Hub id whose snapshot is cached: the family comes from its model_index.json, as for a folder."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--owner--tiny-sdxl"
    _write_index(repo / "snapshots" / "abc123", "StableDiffusionXLPipeline")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert main(["generate", "a cat", "--base", "owner/tiny-sdxl", "--family", "sd15", "--long-clip", "stretch"]) == 2
    assert "--base owner/tiny-sdxl is a model of the SDXL family" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["--height", "--width"])
def test_one_side_given_keeps_the_native_other(models, tmp_path, given):
    output = tmp_path / "one-side.png"
    assert main(["generate", "a cat", "--steps", "1", given, "48", "--base", str(models / "tiny-sd"),
                 "--long-clip", str(models / "longclip.safetensors"), "-o", str(output)]) == 0
    native = 32  # tiny UNet sample_size 16 × VAE scale factor 2
    height, width = np.asarray(Image.open(output)).shape[:2]
    assert (height, width) == ((48, native) if given == "--height" else (native, 48))


def test_nan_image_is_not_saved(models, tmp_path, capsys):
    """A model that decodes to NaN: exit 2, one line, no file (never a black image with exit 0)."""
    components = tiny_sd_components(long_clip=False)
    components["vae"].decoder.conv_out.bias.data.fill_(float("nan"))
    StableDiffusionPipeline(**components).save_pretrained(tmp_path / "nan-sd")
    output = tmp_path / "out" / "nan.png"
    assert main(["generate", "a cat", "--steps", "1", "--base", str(tmp_path / "nan-sd"),
                 "--long-clip", str(models / "longclip.safetensors"), "-o", str(output)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # after progress bars
    assert len(errors) == 1 and "NaN" in errors[0] and "nothing was saved" in errors[0]
    assert not output.parent.exists() or not list(output.parent.iterdir())


def test_convert_and_stretch_refuse_an_existing_destination(models, tmp_path, capsys):
    source = str(models / "longclip.safetensors")
    destination = tmp_path / "out.safetensors"
    destination.write_bytes(b"the user's file")
    for command in (["convert", source, str(destination)], ["stretch", str(models / "tiny-sd"), str(destination),
                                                           "--subfolder", "text_encoder"]):
        assert main(command) == 2
        assert "already exists" in capsys.readouterr().err and destination.read_bytes() == b"the user's file"
    assert main(["convert", source, str(destination), "--overwrite"]) == 0
    assert "text_model.embeddings.position_embedding.weight" in load_file(str(destination))


def test_demo_without_gradio_is_one_line(monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr("longclip_diffusion.demo.app.find_spec",
                        lambda name, *rest: None if name == "gradio" else real_find_spec(name, *rest))
    assert main(["demo"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "needs Gradio" in error and ".[demo]" in error
