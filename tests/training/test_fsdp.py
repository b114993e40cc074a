"""FSDP (``parallel: fsdp``): two gloo processes holding half the batch each and a sharded model take the same
step as one unsharded process holding the whole batch; checkpoints gather the sharded state and resume into it."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from longclip_diffusion.training import synthetic
from longclip_diffusion.training.config import TrainConfig
from longclip_diffusion.training.distributed import DistributedContext, all_reduce_mean, shutdown_distributed
from longclip_diffusion.training.trainer import Trainer


def _model():
    return synthetic.tiny_clip(max_positions=77, image_size=32, width=64, layers=1, seed=0)


def _config(batch_size: int, output_dir: str, **overrides) -> TrainConfig:
    values = dict(
        batch_size=batch_size, num_workers=0, pcm="global", pcm_components=4, output_dir=output_dir, progress=False,
        export=[], max_steps=2, warmup_steps=1, lr=1e-3,
    )
    return TrainConfig(**{**values, **overrides})


def _full_gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every gradient, whole (a collective under FSDP: each rank holds one shard)."""
    grads = {}
    for name, parameter in trainer.model.named_parameters():
        if parameter.grad is not None:
            whole = parameter.grad.full_tensor() if hasattr(parameter.grad, "full_tensor") else parameter.grad
            grads[name] = whole.detach().clone().reshape(() if name == "logit_scale" else whole.shape)  # [1] when sharded
    return grads


def _worker(rank: int, port: int, batch: dict, dataset, output_dir: str, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    rows = batch["pixel_values"].shape[0] // 2
    local = {key: value[rank * rows : (rank + 1) * rows] for key, value in batch.items()}
    context = DistributedContext(rank, 2, 0)
    trainer = Trainer(_config(rows, output_dir, parallel="fsdp"), _model(), dataset, context)
    assert trainer.sharded is not None
    loss = all_reduce_mean(trainer.train_step(local).total)
    grads = _full_gradients(trainer)
    path = trainer.save_checkpoint()
    stepped = trainer.sharded.full_model(trainer.optimizer)
    # a fresh sharded trainer resumed from the checkpoint holds the same model and takes the same next step
    resumed = Trainer(_config(rows, output_dir, parallel="fsdp", resume=str(path)), _model(), dataset, context)
    resumed.resume()
    trainer.train_step(local)
    resumed.train_step(local)
    after_original = trainer.sharded.full_model(trainer.optimizer)
    after_resumed = resumed.sharded.full_model(resumed.optimizer)
    # text-only under FSDP: the features cached by both processes together, only the text layers sharded
    text_only = Trainer(
        _config(rows, output_dir + "-text", parallel="fsdp", text_only=True, feature_cache=output_dir + "-cache"),
        _model(), dataset, context,
    )
    cached = text_only.loader.collate_fn([text_only.loader.dataset[i] for i in range(rank * rows, (rank + 1) * rows)])
    text_loss = all_reduce_mean(text_only.train_step(cached).total)
    text_grads = _full_gradients(text_only)
    # the whole loop (logging reads the sharded logit scale; the model comes back whole on rank 0)
    looped = Trainer(_config(rows, output_dir + "-loop", parallel="fsdp", log_every=1), _model(), dataset, context).train()
    if rank == 0:
        torch.save(
            {"loss": loss, "grads": grads, "stepped": stepped.state_dict(), "after_original": after_original.state_dict(),
             "after_resumed": after_resumed.state_dict(), "text_loss": text_loss, "text_grads": text_grads,
             "looped": looped.state_dict()},
            result_path,
        )
    del trainer, resumed, text_only
    shutdown_distributed()


@pytest.mark.slow
def test_one_sharded_step_equals_one_unsharded_step(tmp_path, dataset, batch, run_two_processes):
    batch = {key: value[:8] for key, value in batch.items() if torch.is_tensor(value)}
    result_path = str(tmp_path / "fsdp.pt")
    run_two_processes(_worker, batch, dataset, str(tmp_path / "fsdp"), result_path)
    sharded = torch.load(result_path, weights_only=True)
    single = Trainer(_config(8, str(tmp_path / "single")), _model(), dataset)
    loss = single.train_step(batch).total
    torch.testing.assert_close(sharded["loss"], loss, atol=1e-5, rtol=1e-5)
    grads = _full_gradients(single)
    assert sharded["grads"].keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(sharded["grads"][name], grad, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")
    # AdamW's first step moves each weight by ±lr wherever |gradient| ≫ eps: the same step, weight by weight. (Where a
    # gradient is ~1e-8 its sign can differ between two summation orders; those weights are left out.)
    for name, value in single.model.state_dict().items():
        if name.endswith("position_ids"):
            continue
        clear = grads[name].abs() > 1e-6 if name in grads else torch.ones_like(value, dtype=torch.bool)
        torch.testing.assert_close(sharded["stepped"][name][clear], value[clear], atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    # resume: the same next step as the run that was not interrupted
    for name, value in sharded["after_original"].items():
        torch.testing.assert_close(sharded["after_resumed"][name], value, msg=lambda m: f"resumed {name}: {m}")
    # text-only: the same loss and text gradients as one text-only process (which reuses the cache the two wrote)
    text_only = Trainer(
        _config(8, str(tmp_path / "single-text"), text_only=True, feature_cache=str(tmp_path / "fsdp-cache")), _model(), dataset
    )
    whole = text_only.loader.collate_fn([text_only.loader.dataset[i] for i in range(8)])
    torch.testing.assert_close(sharded["text_loss"], text_only.train_step(whole).total, atol=1e-5, rtol=1e-5)
    text_grads = _full_gradients(text_only)
    assert sharded["text_grads"].keys() == text_grads.keys() and not any(name.startswith("vision") for name in text_grads)
    for name, grad in text_grads.items():
        torch.testing.assert_close(sharded["text_grads"][name], grad, atol=1e-4, rtol=1e-3, msg=lambda m: f"text-only {name}: {m}")
    # train(): two logged steps, and a whole model that loads into a plain CLIPModel
    assert len((tmp_path / "fsdp-loop" / "metrics.jsonl").read_text().splitlines()) == 2
    assert sharded["looped"]["logit_scale"].shape == ()
    single.model.load_state_dict(sharded["looped"])
    # a checkpoint of 2 sharded processes is refused by 1 process, saying why
    with pytest.raises(ValueError, match="written by 2 processes"):
        single.load_checkpoint(tmp_path / "fsdp" / "checkpoint-latest.pt")
