"""Export round-trips through every core reader."""

from __future__ import annotations

import torch

from longclip_diffusion import checkpoints
from longclip_diffusion.training.export import export_model
from longclip_diffusion.training.model import merged_model, prepare_for_training


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
