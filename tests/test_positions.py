"""Knowledge-preserving stretching: the reference KPS, exact, and its effect on encoders."""

from __future__ import annotations

import pytest
import torch

from longclip_diffusion.positions import StretchConfig, position_embedding, stretch_positions, stretch_text_encoder
from longclip_diffusion.testing import clip_text_config, random_text_encoder
from longclip_diffusion.tokenizer import tokenize


def kps_by_loops(table: torch.Tensor, keep: int, ratio: int) -> torch.Tensor:
    """The published KPS equations, one row at a time."""
    n = table.shape[0]
    rows = [table[i] for i in range(keep)]
    for i in range(n - keep - 1):
        for k in range(ratio):
            rows.append(((ratio - k) * table[keep + i] + k * table[keep + i + 1]) / ratio)
    for k in range(ratio):
        rows.append(table[n - 1] + k * (table[n - 1] - table[n - 2]) / ratio)
    return torch.stack(rows)


def test_matches_official_kps_example(reference):
    stretched = stretch_positions(reference["kps_in_77"], keep=20, ratio=4)
    assert stretched.shape == (248, 64)
    torch.testing.assert_close(stretched, reference["kps_out_248"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rows, keep, ratio", [(77, 20, 4), (77, 0, 2), (77, 10, 3), (16, 4, 5), (77, 75, 4)])
def test_matches_loop_equations_for_any_keep_and_ratio(rows, keep, ratio):
    table = torch.randn(rows, 8, dtype=torch.float64)
    stretched = stretch_positions(table, keep=keep, ratio=ratio)
    assert stretched.shape[0] == StretchConfig(keep, ratio).stretched_length(rows) == ratio * rows - (ratio - 1) * keep
    torch.testing.assert_close(stretched, kps_by_loops(table, keep, ratio), rtol=0, atol=1e-12)


def test_rejects_impossible_arguments():
    with pytest.raises(ValueError, match="keep"):
        stretch_positions(torch.zeros(77, 4), keep=76)
    with pytest.raises(ValueError, match="ratio"):
        stretch_positions(torch.zeros(77, 4), ratio=0)


@pytest.mark.parametrize("with_projection", [False, True])
def test_stretched_encoder_is_consistent_and_keeps_short_prompts(with_projection):
    original = random_text_encoder(clip_text_config(), with_projection=with_projection)
    stretched = stretch_text_encoder(random_text_encoder(clip_text_config(), with_projection=with_projection))
    assert stretched.config.max_position_embeddings == 248
    assert position_embedding(stretched).weight.shape == (248, 32)
    ids_77, ids_248 = tokenize("a red bus", context_length=77), tokenize("a red bus", context_length=248)
    with torch.no_grad():
        before = original(ids_77).last_hidden_state
        after = stretched(ids_248).last_hidden_state
    # causal attention: positions up to end-of-text (< keep) see only identical rows
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=0, atol=1e-6)


def test_tokens_past_77_change_a_stretched_encoder():
    encoder = stretch_text_encoder(random_text_encoder(clip_text_config()))
    base = "a photograph of a quiet harbour at dawn with fishing boats " * 8
    ids_a, ids_b = tokenize(base + "and a red lighthouse"), tokenize(base + "and a green windmill")
    assert torch.equal(ids_a[0, :77], ids_b[0, :77]) and not torch.equal(ids_a, ids_b)
    with torch.no_grad():
        end_a = encoder(ids_a).last_hidden_state[0, 100:]
        end_b = encoder(ids_b).last_hidden_state[0, 100:]
    assert (end_a - end_b).abs().max() > 1e-3


@pytest.mark.parametrize("with_projection", [False, True])
def test_an_encoder_that_is_already_long_is_not_stretched_again(with_projection):
    encoder = stretch_text_encoder(random_text_encoder(clip_text_config(), with_projection=with_projection))
    table = position_embedding(encoder).weight.detach().clone()
    with pytest.raises(ValueError, match="already has 248 positions; KPS stretches a 77-position CLIP"):
        stretch_text_encoder(encoder)
    assert torch.equal(position_embedding(encoder).weight, table)  # nothing changed
    assert encoder.config.max_position_embeddings == 248
    with pytest.raises(ValueError, match="already has 78 positions"):
        stretch_positions(torch.zeros(78, 4))


def test_reset_position_ids_follows_each_table():
    from transformers import CLIPConfig, CLIPModel

    from longclip_diffusion.positions import reset_position_ids

    text = clip_text_config().to_dict()
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    embeddings = model.text_model.embeddings
    embeddings.position_embedding = torch.nn.Embedding(100, 32)
    reset_position_ids(model)
    assert torch.equal(embeddings.position_ids, torch.arange(100).unsqueeze(0))
    assert torch.equal(model.vision_model.embeddings.position_ids, torch.arange(17).unsqueeze(0))  # 4×4 patches + class
    assert "text_model.embeddings.position_ids" not in model.state_dict()
