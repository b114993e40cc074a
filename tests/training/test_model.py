"""Position stretching, frozen rows, merged export copy, padding trimming."""

from __future__ import annotations

import torch

from longclip_diffusion import positions
from longclip_diffusion.training.data import CaptionCollator, trim_padding
from longclip_diffusion.training.model import (
    LongCLIPFeatures,
    SplitPositionEmbedding,
    context_length,
    interpolate_positions,
    merged_model,
    prepare_for_training,
)


def text_table(model) -> torch.Tensor:
    return model.text_model.embeddings.position_embedding.weight.detach().clone()


def test_kps_table_and_frozen_split(make_model):
    model = make_model()
    original = text_table(model)
    prepare_for_training(model, stretch="kps", keep=20)
    assert context_length(model) == 248 and model.config.text_config.max_position_embeddings == 248
    torch.testing.assert_close(text_table(model), positions.stretch_positions(original, keep=20, ratio=4))
    embedding = model.text_model.embeddings.position_embedding
    assert isinstance(embedding, SplitPositionEmbedding) and embedding.keep == 20
    names = {name for name, _ in model.named_parameters()}
    assert "text_model.embeddings.position_embedding.trainable" in names
    assert not any(name.endswith("position_embedding.frozen") for name in names)
    assert model.logit_scale.item() == torch.log(torch.tensor(100.0)).item()


def test_frozen_rows_survive_adamw_with_weight_decay(make_model, batch):
    model = prepare_for_training(make_model(), stretch="kps", keep=20)
    before = text_table(model)
    features = LongCLIPFeatures(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    for _ in range(3):
        image, long, short, scale = features(batch["pixel_values"], batch["long_ids"], batch["short_ids"])
        loss = (scale.exp() * image @ long.T).logsumexp(dim=1).mean() + (image @ short.T).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = text_table(model)
    assert torch.equal(after[:20], before[:20])
    assert not torch.allclose(after[20:], before[20:])


def test_interpolation_baseline_freezes_nothing(make_model):
    model = make_model()
    original = text_table(model)
    prepare_for_training(model, stretch="interpolate")
    table = text_table(model)
    assert table.shape[0] == 248 and model.text_model.embeddings.position_embedding.keep == 0
    torch.testing.assert_close(table[0], original[0])
    torch.testing.assert_close(table[-1], original[-1])
    torch.testing.assert_close(interpolate_positions(original, 153)[76], original[38])  # midpoint rows line up


def test_merged_model_gives_the_same_features(make_model, batch):
    model = prepare_for_training(make_model(), stretch="kps").eval()
    plain = merged_model(model).eval()
    assert isinstance(plain.text_model.embeddings.position_embedding, torch.nn.Embedding)
    with torch.no_grad():
        ours = LongCLIPFeatures(model)(batch["pixel_values"], batch["long_ids"])[1]
        theirs = plain.get_text_features(input_ids=batch["long_ids"]).pooler_output
    torch.testing.assert_close(ours, torch.nn.functional.normalize(theirs, dim=-1), atol=1e-5, rtol=1e-5)


def test_trim_padding_keeps_features(make_model, dataset):
    model = prepare_for_training(make_model(), stretch="kps").eval()
    items = [dataset[i] for i in range(8)]
    full, _ = CaptionCollator(248).tokenize([short for _, _, short in items])
    trimmed = trim_padding(full)
    assert full.shape[1] == 248 and trimmed.shape[1] < 40
    with torch.no_grad():
        everything = model.get_text_features(input_ids=full).pooler_output
        short = model.get_text_features(input_ids=trimmed).pooler_output
    torch.testing.assert_close(everything, short, atol=1e-5, rtol=1e-5)
    assert torch.equal(CaptionCollator(248)(items)["short_ids"], trimmed)  # the collator trims on the host
