"""Two gloo processes (torch.multiprocessing.spawn) compute the same loss and gradients as one process holding the
whole global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from longclip_diffusion.training import synthetic
from longclip_diffusion.training.config import TrainConfig
from longclip_diffusion.training.distributed import DistributedContext, all_reduce_mean, shutdown_distributed
from longclip_diffusion.training.trainer import Trainer

MODES = ("global", "none")


def _model():
    return synthetic.tiny_clip(max_positions=77, image_size=32, width=64, layers=1, seed=0)


def _config(pcm: str, batch_size: int, output_dir: str) -> TrainConfig:
    return TrainConfig(
        batch_size=batch_size, num_workers=0, pcm=pcm, pcm_components=4, output_dir=output_dir, progress=False,
        export=[], max_steps=1,
    )


def _loss_and_grads(trainer: Trainer, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = trainer.compute_loss(batch)
    loss.total.backward()
    grads = {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.total.detach(), grads


def _worker(rank: int, port: int, batch: dict, dataset, output_dir: str, result_path: str) -> None:
    world_size = 2
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    rows = batch["pixel_values"].shape[0] // world_size
    local = {key: value[rank * rows : (rank + 1) * rows] for key, value in batch.items()}
    results = {}
    for pcm in MODES:
        context = DistributedContext(rank, world_size, 0)
        trainer = Trainer(_config(pcm, rows, output_dir), _model(), dataset, context)
        loss, grads = _loss_and_grads(trainer, local)
        results[pcm] = (all_reduce_mean(loss), grads)
        del trainer
    if rank == 0:
        torch.save(results, result_path)
    shutdown_distributed()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, dataset, batch, run_two_processes):
    batch = {key: value[:8] for key, value in batch.items() if torch.is_tensor(value)}
    result_path = str(tmp_path / "ddp.pt")
    run_two_processes(_worker, batch, dataset, str(tmp_path / "ddp"), result_path, seconds=180)
    distributed = torch.load(result_path, weights_only=True)
    for pcm in MODES:
        trainer = Trainer(_config(pcm, 8, str(tmp_path / "single")), _model(), dataset)
        loss, grads = _loss_and_grads(trainer, batch)
        ddp_loss, ddp_grads = distributed[pcm]
        torch.testing.assert_close(ddp_loss, loss, atol=1e-5, rtol=1e-5)
        assert ddp_grads.keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(ddp_grads[name], grad, atol=1e-4, rtol=1e-3, msg=lambda message: f"{pcm}, {name}: {message}")
