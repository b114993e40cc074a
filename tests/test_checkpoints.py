"""Checkpoints: every format read with reference fidelity (≤ 1e-5 fp32), written in standard formats, safe errors."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from longclip_diffusion.checkpoints import (
    CheckpointError,
    convert,
    detect_format,
    load_clip_model,
    load_text_encoder,
    read_state_dict,
    save_openai_file,
)
from longclip_diffusion.files import PARTIAL_MARKER, DestinationExistsError
from longclip_diffusion.testing import clip_text_config, random_openai_text_state_dict, random_text_encoder
from longclip_diffusion.tokenizer import tokenize

TOLERANCE = dict(rtol=0, atol=1e-5)


def reference_forward(state_dict: dict[str, torch.Tensor], input_ids: torch.Tensor, keep: int = 20):
    """Long-CLIP's text forward from the published equations, on an OpenAI-format state dict.

    x = tok_emb + pe·mask(<keep) + pe_res·mask(≥keep); pre-LN blocks with causal multi-head attention (heads = width/64)
    and a QuickGELU MLP; ln_final; pooled = x[argmax id] @ text_projection.
    """
    sd = state_dict
    width = sd["ln_final.weight"].shape[0]
    heads = width // 64
    table = sd["positional_embedding"].clone()
    if "positional_embedding_res" in sd:
        table[keep:] = sd["positional_embedding_res"][keep:]
    x = sd["token_embedding.weight"][input_ids] + table[: input_ids.shape[1]]
    length = input_ids.shape[1]
    causal = torch.full((length, length), float("-inf")).triu(1)
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps=1e-5)
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        split = lambda t: t.view(t.shape[0], length, heads, width // heads).transpose(1, 2)
        scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(width // heads) + causal
        attended = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(x.shape)
        x = x + attended @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps=1e-5)
        h = h @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"], eps=1e-5)
    pooled = x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)] @ sd["text_projection"]
    return x, pooled


def assert_matches_reference(model, reference):
    with torch.no_grad():
        output = model(reference["input_ids"])
    torch.testing.assert_close(output.last_hidden_state, reference["last_hidden_state"], **TOLERANCE)
    if hasattr(output, "text_embeds"):
        torch.testing.assert_close(output.text_embeds, reference["text_embeds"], **TOLERANCE)


def test_official_safetensors_matches_official_outputs(reference, reference_checkpoint):
    assert_matches_reference(load_text_encoder(reference_checkpoint, with_projection=True), reference)


def test_independent_forward_reproduces_official_outputs(reference, reference_checkpoint):
    """The re-derived forward used below agrees with the official code, so it is a valid reference."""
    hidden, pooled = reference_forward(load_file(str(reference_checkpoint)), reference["input_ids"])
    torch.testing.assert_close(hidden, reference["last_hidden_state"], **TOLERANCE)
    torch.testing.assert_close(pooled, reference["text_embeds"], **TOLERANCE)


def test_official_pickle_and_text_only_files(tmp_path, reference, reference_checkpoint):
    state_dict = load_file(str(reference_checkpoint))
    torch.save(state_dict, tmp_path / "longclip.pt")
    assert_matches_reference(load_text_encoder(tmp_path / "longclip.pt", with_projection=True), reference)
    text_only = {k: v for k, v in state_dict.items() if not k.startswith("visual.")}
    torch.save({f"module.{k}": v for k, v in text_only.items()}, tmp_path / "text-only-ddp.pt")
    assert_matches_reference(load_text_encoder(tmp_path / "text-only-ddp.pt", with_projection=True), reference)


def test_position_residual_table_is_used_from_row_20(reference_checkpoint):
    state_dict = load_file(str(reference_checkpoint))
    assert not torch.equal(state_dict["positional_embedding"][20:], state_dict["positional_embedding_res"][20:])
    model = load_text_encoder(reference_checkpoint)
    table = model.embeddings.position_embedding.weight
    torch.testing.assert_close(table[:20], state_dict["positional_embedding"][:20], rtol=0, atol=0)
    torch.testing.assert_close(table[20:], state_dict["positional_embedding_res"][20:], rtol=0, atol=0)


@pytest.mark.parametrize("width, layers, positions", [(192, 2, 248), (64, 1, 77), (256, 3, 248)])
def test_random_sizes_match_independent_forward(tmp_path, width, layers, positions):
    state_dict = random_openai_text_state_dict(
        width, layers, positions, projection=96, vocab=49408, seed=width, long_clip_extras=True
    )
    save_file(state_dict, str(tmp_path / "random.safetensors"))
    model = load_text_encoder(tmp_path / "random.safetensors", with_projection=True)
    ids = tokenize(["a cat", "a long prompt about many things " * 12, ""], context_length=positions)
    hidden, pooled = reference_forward(state_dict, ids)
    with torch.no_grad():
        output = model(ids)
    torch.testing.assert_close(output.last_hidden_state, hidden, **TOLERANCE)
    torch.testing.assert_close(output.text_embeds, pooled, **TOLERANCE)


def test_diffusers_folder_loads_with_plain_from_pretrained(tmp_path, reference, reference_checkpoint, capfd):
    convert(reference_checkpoint, tmp_path / "converted")
    capfd.readouterr()
    # SD 1.x's text_encoder layout: a CLIPTextModel without projection, so plain transformers loads it silently
    text_encoder, info = CLIPTextModel.from_pretrained(tmp_path / "converted" / "text_encoder", output_loading_info=True)
    assert not any(info.values()), info
    assert "LOAD REPORT" not in "".join(capfd.readouterr())
    assert json.loads((tmp_path / "converted" / "text_encoder" / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    with torch.no_grad():
        hidden = text_encoder(reference["input_ids"]).last_hidden_state
    torch.testing.assert_close(hidden, reference["last_hidden_state"], **TOLERANCE)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "converted" / "tokenizer")
    assert tokenizer.model_max_length == 248
    assert (tmp_path / "converted" / "tokenizer" / "vocab.json").exists()
    assert tokenizer("a cat").input_ids == tokenize("a cat")[0, :4].tolist()
    # our own loader reads the folder too (whole folder or the text_encoder subfolder), the same way
    for source in (tmp_path / "converted", tmp_path / "converted" / "text_encoder"):
        assert_matches_reference(load_text_encoder(source), reference)


def test_comfy_file_layout_and_round_trip(tmp_path, reference, reference_checkpoint):
    path = convert(reference_checkpoint, tmp_path / "longclip-L.safetensors")
    keys = set(load_file(str(path)))
    assert "text_model.embeddings.position_embedding.weight" in keys and "text_projection.weight" in keys
    assert load_file(str(path))["text_model.embeddings.position_embedding.weight"].shape[0] == 248
    assert detect_format(load_file(str(path))) == "transformers"
    assert_matches_reference(load_text_encoder(path, with_projection=True), reference)
    prefixed = {f"clip_l.{k}": v for k, v in load_file(str(path)).items()}
    save_file(prefixed, str(tmp_path / "prefixed.safetensors"))
    assert detect_format(prefixed) == "comfy"
    assert_matches_reference(load_text_encoder(tmp_path / "prefixed.safetensors", with_projection=True), reference)


def test_openai_export_round_trip(tmp_path, reference, reference_checkpoint):
    model = load_clip_model(reference_checkpoint)
    save_openai_file(model, tmp_path / "export.pt")
    exported = torch.load(tmp_path / "export.pt", weights_only=True)
    original = load_file(str(reference_checkpoint))
    assert set(original) <= set(exported)
    for key in original:
        if not key.startswith("positional_embedding"):
            torch.testing.assert_close(exported[key], original[key], rtol=0, atol=0, msg=key)
    hidden, pooled = reference_forward(exported, reference["input_ids"])
    torch.testing.assert_close(hidden, reference["last_hidden_state"], **TOLERANCE)
    torch.testing.assert_close(pooled, reference["text_embeds"], **TOLERANCE)


def test_corrupt_truncated_and_foreign_files_name_the_file(tmp_path, reference_checkpoint):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(reference_checkpoint.read_bytes()[:5000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    foreign = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(foreign))
    for path, message in [(truncated, "truncated"), (garbage, "cannot be read"), (foreign, "expected a CLIP text encoder")]:
        with pytest.raises(CheckpointError, match=message) as error:
            load_text_encoder(path)
        assert str(path) in str(error.value)


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    torch.save({"positional_embedding": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_convert_is_atomic(tmp_path, reference_checkpoint, monkeypatch):
    destination = tmp_path / "out.safetensors"
    destination.write_bytes(b"previous")

    def failing_save(*args, **kwargs):
        Path(args[1]).write_bytes(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr("longclip_diffusion.checkpoints.save_file", failing_save)
    with pytest.raises(OSError, match=f"could not write {destination}: disk full"):
        convert(reference_checkpoint, destination, overwrite=True)
    assert destination.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [destination]


def test_safetensors_reads_only_requested_tensors(reference_checkpoint):
    text_only = read_state_dict(reference_checkpoint, include=("transformer.", "token_embedding"))
    assert text_only and not any(key.startswith("visual.") for key in text_only)


def test_width_check_names_both_widths_for_models_and_state_dicts():
    from longclip_diffusion.checkpoints import check_text_encoder_width, text_encoder_width

    encoder = random_text_encoder(clip_text_config(hidden_size=32), long=True)
    assert text_encoder_width(encoder) == text_encoder_width({f"clip_l.{k}": v for k, v in encoder.state_dict().items()}) == 32
    check_text_encoder_width(encoder, 32, where="text_encoder")  # fits: no error
    with pytest.raises(CheckpointError, match=r"text_encoder of SDXL: the text encoder is 32 wide but the model reads 16"):
        check_text_encoder_width(encoder.state_dict(), 48 - 32, where="text_encoder of SDXL")


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in [root, *root.rglob("*")]}


def test_written_files_honour_the_umask(tmp_path, reference_checkpoint, umask_022):
    comfy = convert(reference_checkpoint, tmp_path / "longclip.safetensors")
    openai = convert(reference_checkpoint, tmp_path / "longclip.pt")
    folder = convert(reference_checkpoint, tmp_path / "diffusers")
    assert stat.S_IMODE(comfy.stat().st_mode) == stat.S_IMODE(openai.stat().st_mode) == 0o644
    written = modes(folder)
    assert {mode for name, mode in written.items() if (folder / name).is_dir()} == {0o755}
    assert {mode for name, mode in written.items() if (folder / name).is_file()} == {0o644}
    assert len(written) > 6  # text_encoder/config.json, model.safetensors, tokenizer files


def test_overwrite_replaces_only_what_convert_writes(tmp_path, reference_checkpoint):
    destination = tmp_path / "out"
    (destination / "text_encoder").mkdir(parents=True)
    (destination / "text_encoder" / "old-weights.bin").write_bytes(b"old")
    (destination / "unet").mkdir()
    (destination / "unet" / "config.json").write_text("{}")
    (destination / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(DestinationExistsError, match="--overwrite"):
        convert(reference_checkpoint, destination)
    assert (destination / "text_encoder" / "old-weights.bin").read_bytes() == b"old"

    convert(reference_checkpoint, destination, overwrite=True)
    assert not (destination / "text_encoder" / "old-weights.bin").exists()  # text_encoder/ is ours, replaced whole
    assert (destination / "unet" / "config.json").read_text() == "{}"
    assert (destination / "model_index.json").read_text() == '{"_class_name": "StableDiffusionPipeline"}'
    assert sorted(path.name for path in destination.iterdir()) == ["model_index.json", "text_encoder", "tokenizer", "unet"]
    assert load_text_encoder(destination).config.max_position_embeddings == 248


def test_leftovers_of_a_killed_run_are_removed_by_the_next_one(tmp_path, reference_checkpoint):
    """What ``kill -9`` during a write leaves (a temporary named after a dead pid) goes at the next write there."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    destination = tmp_path / "longclip.safetensors"
    leftover_file = tmp_path / f".longclip.safetensors{PARTIAL_MARKER}{dead.pid}"
    leftover_file.write_bytes(b"half of a 500 MB file")
    leftover_folder = tmp_path / "out" / f".text_encoder{PARTIAL_MARKER}{dead.pid}"
    leftover_folder.mkdir(parents=True)
    (leftover_folder / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / f".longclip.safetensors{PARTIAL_MARKER}{os.getppid()}"  # another run still writing: kept
    alive.write_bytes(b"in progress")

    convert(reference_checkpoint, destination)
    convert(reference_checkpoint, tmp_path / "out")
    assert not leftover_file.exists() and not leftover_folder.exists()
    assert alive.exists()
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["text_encoder", "tokenizer"]


def test_state_dict_without_projection_or_with_a_vision_tower_reads_the_text_tower(tmp_path, reference_checkpoint):
    """The folder loader keeps only what the model needs: a CLIPModel folder gives its text tower, quietly."""
    load_clip_model(reference_checkpoint).save_pretrained(tmp_path / "clip")
    text = load_text_encoder(tmp_path / "clip", with_projection=True)
    reference_model = load_text_encoder(reference_checkpoint, with_projection=True)
    for key, value in reference_model.state_dict().items():
        torch.testing.assert_close(text.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_helpers_count_layers_and_build_configs():
    from longclip_diffusion.checkpoints import attention_heads, clip_text_config, count_layers
    from longclip_diffusion.tokenizer import END_OF_TEXT, START_OF_TEXT

    state_dict = {f"blocks.{i}.weight": torch.zeros(1) for i in (0, 1, 2)} | {"blocks.2.bias": torch.zeros(1)}
    assert count_layers(state_dict, "blocks.") == 3
    with pytest.raises(CheckpointError, match=r"block\(s\) \[1\] missing"):
        count_layers({k: v for k, v in state_dict.items() if not k.startswith("blocks.1.")}, "blocks.")
    assert [attention_heads(width) for width in (32, 512, 768, 1280)] == [1, 8, 12, 20]
    config = clip_text_config(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, max_position_embeddings=248)
    assert (config.num_attention_heads, config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        12, START_OF_TEXT, END_OF_TEXT, 0
    )
