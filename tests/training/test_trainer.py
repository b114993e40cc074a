"""Trainer options: bf16 autocast, gradient checkpointing, learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from longclip_diffusion.training.trainer import Trainer, warmup_cosine


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path, dataset, batch, make_model, make_config):
    results = []
    for checkpointing in (False, True):
        trainer = Trainer(make_config(tmp_path / str(checkpointing), gradient_checkpointing=checkpointing), make_model(), dataset)
        assert trainer.model.is_activation_checkpointing == checkpointing
        loss = trainer.compute_loss(batch)
        loss.total.backward()
        results.append((loss.total.detach(), trainer.model.text_model.embeddings.position_embedding.trainable.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-4)


def test_bf16_step_runs_and_keeps_fp32_weights(tmp_path, dataset, batch, make_model, make_config):
    trainer = Trainer(make_config(tmp_path, precision="bf16"), make_model(), dataset)
    loss = trainer.train_step(batch)
    assert torch.isfinite(loss.total) and trainer.model.logit_scale.dtype == torch.float32


def test_fp16_on_cpu_is_refused(tmp_path, dataset, make_model, make_config):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed with a GPU")
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        Trainer(make_config(tmp_path, precision="fp16"), make_model(), dataset)


def test_warmup_then_cosine():
    factor = warmup_cosine(warmup_steps=4, total_steps=14)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) == pytest.approx(0.5) and factor(14) == pytest.approx(0.0, abs=1e-12)
    assert all(factor(s) >= factor(s + 1) for s in range(4, 14))
    assert factor(4) == pytest.approx(0.5 * (1 + math.cos(0)))
