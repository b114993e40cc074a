"""ComfyUI layouts without ComfyUI: conversion, KPS on ComfyUI-layout state dicts, saving, token counting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from longclip_diffusion import comfy_format, positions, prompts
from tiny_models import comfy_text_state_dict, openai_text_state_dict

FIXTURES = Path(os.environ.get("LONGCLIP_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))
REFERENCE = FIXTURES / "longclip-reference-tiny.safetensors"


@pytest.fixture(scope="module")
def reference_file():
    if not REFERENCE.is_file():
        pytest.skip(f"fixture {REFERENCE} missing")
    return REFERENCE


def test_reference_file_becomes_comfy_layout_with_effective_table(reference_file):
    raw = load_file(str(reference_file))
    sd = comfy_format.load_comfy_text_encoder(reference_file)
    table = sd[comfy_format.TABLE]
    assert table.shape == (248, 128)
    assert torch.equal(table[:20], raw["positional_embedding"][:20])
    assert torch.equal(table[20:], raw["positional_embedding_res"][20:])
    assert not any(k.startswith(("visual", "vision")) or "position_ids" in k for k in sd)
    assert all(k.startswith("text_model.") or k == comfy_format.PROJECTION for k in sd)
    # ComfyUI's projection is a square Linear: the 64-wide reference one is zero-padded, its rows kept.
    assert sd[comfy_format.PROJECTION].shape == (128, 128)
    assert torch.equal(sd[comfy_format.PROJECTION][:64], raw["text_projection"].t())
    assert not sd[comfy_format.PROJECTION][64:].any()
    assert "text_model.encoder.layers.1.mlp.fc1.weight" in sd  # what ComfyUI needs to detect 248 positions


def test_text_only_pickle_and_comfy_file_read_the_same(tmp_path, reference_file):
    raw = {k: v for k, v in load_file(str(reference_file)).items() if not k.startswith("visual.")}
    torch.save(raw, tmp_path / "text-only.pt")
    from_pickle = comfy_format.load_comfy_text_encoder(tmp_path / "text-only.pt")
    saved = comfy_format.save_comfy_state_dict(from_pickle, tmp_path / "long.safetensors")
    again = comfy_format.load_comfy_text_encoder(saved)
    assert from_pickle.keys() == again.keys()
    assert all(torch.equal(from_pickle[k], again[k]) for k in from_pickle)
    assert not list(tmp_path.glob("*.partial"))


def test_config_from_shapes(reference_file):
    sd = comfy_format.load_comfy_text_encoder(reference_file)
    assert comfy_format.text_model_config(sd) == {
        "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512, "num_hidden_layers": 3,
        "max_position_embeddings": 248,
    }


def test_kps_on_a_comfy_clip_state_dict_stretches_only_the_named_encoders():
    small = {k: v.float() for k, v in comfy_text_state_dict(width=64, layers=1, intermediate=32).items()}
    full = comfy_format.with_prefix(small, "clip_l.transformer.") | comfy_format.with_prefix(small, "clip_g.transformer.")
    full["clip_l.logit_scale"] = torch.tensor(4.6)
    assert comfy_format.encoder_prefixes(full) == {"clip_l": "clip_l.transformer.", "clip_g": "clip_g.transformer."}

    stretched = comfy_format.stretch_state_dict(full, keep=20, ratio=4, names=("clip_g",))
    g_table = stretched["clip_g.transformer." + comfy_format.TABLE]
    assert g_table.shape == (248, 64)
    assert torch.equal(g_table, positions.stretch_positions(small[comfy_format.TABLE]))
    assert stretched["clip_l.transformer." + comfy_format.TABLE].shape == (77, 64)
    assert full["clip_g.transformer." + comfy_format.TABLE].shape == (77, 64)  # input untouched
    assert stretched["clip_l.logit_scale"] is full["clip_l.logit_scale"]

    both = comfy_format.stretch_state_dict(full, keep=10, ratio=2)
    assert {both[p + comfy_format.TABLE].shape[0] for p in ("clip_l.transformer.", "clip_g.transformer.")} == {144}


def test_kps_matches_the_official_example():
    if not (FIXTURES / "longclip-reference-tiny-outputs.safetensors").is_file():
        pytest.skip("reference outputs missing")
    reference = load_file(str(FIXTURES / "longclip-reference-tiny-outputs.safetensors"))
    sd = {comfy_format.TABLE: reference["kps_in_77"]}
    stretched = comfy_format.stretch_state_dict(sd)[comfy_format.TABLE]
    torch.testing.assert_close(stretched, reference["kps_out_248"])


def test_prefix_helpers_round_trip():
    sd = {"text_model.a": torch.zeros(1), "text_projection.weight": torch.ones(1)}
    assert comfy_format.without_prefix(comfy_format.with_prefix(sd, "clip_l.transformer."), "clip_l.transformer.") == sd


def test_saving_needs_a_text_encoder(tmp_path):
    with pytest.raises(ValueError, match="nothing to save"):
        comfy_format.save_comfy_state_dict({"foo": torch.zeros(1)}, tmp_path / "x.safetensors")


def test_openai_file_without_projection_still_loads(tmp_path):
    sd = openai_text_state_dict(width=64, layers=2, intermediate=32, dtype=torch.float32)
    del sd["text_projection"]
    save_file(sd, str(tmp_path / "noproj.safetensors"))
    loaded = comfy_format.load_comfy_text_encoder(tmp_path / "noproj.safetensors")
    assert comfy_format.PROJECTION not in loaded
    assert loaded[comfy_format.TABLE].shape == (248, 64)


def test_token_count_reports_what_a_77_token_encoder_drops():
    prompt = "a photo of " + " ".join(f"object{i} is round," for i in range(40)) + " and the last one is red"
    counted = prompts.count_tokens(prompt, limit=77)
    assert counted.num_tokens > 200
    assert counted.dropped_text.endswith("the last one is red")
    assert prompt.startswith(counted.kept_text.strip())
    short = prompts.count_tokens("a photo of a cat", limit=77)
    assert short.num_tokens == 5 and short.dropped_text == ""
