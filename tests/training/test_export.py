"""Export round-trips through every core reader; file modes; what a new export may replace."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from longclip_diffusion import checkpoints
from longclip_diffusion.files import DestinationExistsError
from longclip_diffusion.training.config import save_config
from longclip_diffusion.training.export import MANIFEST_NAME, export_model
from longclip_diffusion.training.model import merged_model, prepare_for_training
from longclip_diffusion.training.trainer import Trainer


def _text_features(model, ids):
    output = model(input_ids=ids) if not hasattr(model, "get_text_features") else model.get_text_features(input_ids=ids)
    return output.pooler_output if not isinstance(output, torch.Tensor) else output


def test_export_round_trips(tmp_path, batch, make_model):
    model = prepare_for_training(make_model(), stretch="kps")
    with torch.no_grad():
        table = model.text_model.embeddings.position_embedding.trainable
        table.add_(torch.randn_like(table))  # "trained" rows differ from the frozen stretch
    written = export_model(model, tmp_path)
    assert set(written) == {"openai", "diffusers", "transformers", "comfy"}
    plain = merged_model(model).eval()
    ids = batch["long_ids"]
    with torch.no_grad():
        expected_pooled = _text_features(plain, ids)
        expected_hidden = plain.text_model(input_ids=ids).last_hidden_state
        expected_image = plain.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        for source in (written["openai"], written["transformers"]):
            loaded = checkpoints.load_clip_model(source).eval()
            torch.testing.assert_close(_text_features(loaded, ids), expected_pooled, atol=1e-5, rtol=1e-4)
            image = loaded.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            torch.testing.assert_close(image, expected_image, atol=1e-5, rtol=1e-4)
        for source in (written["openai"], written["diffusers"] / "text_encoder", written["comfy"]):
            encoder = checkpoints.load_text_encoder(source).eval()
            assert encoder.config.max_position_embeddings == 248
            torch.testing.assert_close(encoder(input_ids=ids).last_hidden_state, expected_hidden, atol=1e-5, rtol=1e-4)
    state = checkpoints.read_state_dict(written["openai"])
    assert state["positional_embedding"].shape[0] == 248 and "positional_embedding_res" in state


def test_checkpoint_config_and_exports_honour_the_umask(tmp_path, dataset, make_model, make_config):
    """0644 files and 0755 folders under umask 022 (as ``cp`` would), so another user (a ComfyUI service) can read them."""
    previous = os.umask(0o022)
    try:
        config = make_config(tmp_path / "run", max_steps=1)
        trainer = Trainer(config, make_model(), dataset)
        trainer.train()
        save_config(config, tmp_path / "run" / "config.yaml")
        export_model(trainer.model, tmp_path / "run" / "export")
    finally:
        os.umask(previous)
    modes = {path.relative_to(tmp_path): stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "run").rglob("*")}
    assert modes[Path("run/checkpoint-latest.pt")] == 0o644 and modes[Path("run/config.yaml")] == 0o644
    assert modes[Path("run/export/longclip.pt")] == 0o644 and modes[Path("run/export/diffusers/text_encoder")] == 0o755
    wrong = {str(path): oct(mode) for path, mode in modes.items() if mode != (0o755 if (tmp_path / path).is_dir() else 0o644)}
    assert not wrong


def test_a_new_export_replaces_the_previous_one_but_nothing_else(tmp_path, make_model):
    export = tmp_path / "export"
    export_model(make_model(), export, ["openai", "transformers"])
    (export / "transformers" / "stale.txt").write_text("from the earlier export")
    (export / "notes.txt").write_text("mine")
    written = export_model(make_model(seed=1), export, ["openai", "transformers"])
    assert not (written["transformers"] / "stale.txt").exists() and (export / "notes.txt").read_text() == "mine"
    assert json.loads((export / MANIFEST_NAME).read_text())["paths"] == {"openai": "longclip.pt", "transformers": "transformers"}
    with pytest.raises(DestinationExistsError, match="comfy|longclip-text.safetensors"):
        (export / "longclip-text.safetensors").write_text("a user's file")
        export_model(make_model(), export, ["comfy"])
    assert (export / "longclip-text.safetensors").read_text() == "a user's file"
