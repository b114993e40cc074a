"""Trainer options: bf16 autocast, gradient checkpointing, learning-rate schedule; a step reads nothing back."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


class ValueReads(TorchDispatchMode):
    """Records the ops that copy a tensor's values to the host (``.item()``, ``bool()``, ``.tolist()`` all end in
    ``_local_scalar_dense``) or whose output shape depends on them: on a GPU each makes the host wait for the device."""

    READS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "repeat_interleave"})

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.READS:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("text_only", [False, True], ids=["full", "text-only"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_step_reads_no_value_back(tmp_path, dataset, make_model, make_config, text_only, precision):
    """The step queues its work and returns: losses stay tensors, the optimizer keeps its step count on the device,
    captions were trimmed by the collator. (What happens inside a kernel, such as ``torch.linalg.svd`` checking its
    solver's status for PCM, no dispatcher sees; ``benchmarks/gpu_train.py`` counts the syncs of a step on a GPU.)"""
    trainer = Trainer(make_config(tmp_path, text_only=text_only, precision=precision), make_model(), dataset)
    batch = trainer.loader.collate_fn([trainer.loader.dataset[i] for i in range(8)])
    trainer.train_step(batch)  # the first step creates the optimizer state
    reads = ValueReads()
    with reads:
        loss = trainer.train_step(batch)
    assert reads.seen == []
    assert torch.isfinite(loss.total) and trainer.step == 2
