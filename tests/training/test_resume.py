"""Checkpoint and exact resume: a resumed run takes the same next step as an uninterrupted one."""

from __future__ import annotations

import json

import torch

from longclip_diffusion.training.trainer import CHECKPOINT_NAME, Trainer


def test_resume_gives_the_same_next_step(tmp_path, dataset, make_model, make_config):
    # uninterrupted: 4 steps of batch 8 over 24 samples (3 batches an epoch, so resume crosses an epoch boundary)
    data = torch.utils.data.Subset(dataset, range(24))
    straight = Trainer(make_config(tmp_path / "straight", max_steps=4), make_model(), data)
    straight.train()
    # stopped after 2 steps, then resumed to 4 by a fresh trainer holding a different model
    first = Trainer(make_config(tmp_path / "resumed", max_steps=4), make_model(), data)
    first.train(stop_at=2)
    assert (tmp_path / "resumed" / CHECKPOINT_NAME).is_file()
    resumed = Trainer(make_config(tmp_path / "resumed", max_steps=4, resume="auto"), make_model(seed=1), data)
    resumed.train()
    assert resumed.step == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda message: f"{name}: {message}")
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    def logged(run: str) -> list[tuple[int, float]]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(entry["step"], round(entry["loss"], 5)) for entry in map(json.loads, lines)]

    assert logged("straight") == logged("resumed")


def test_resume_refuses_a_different_world_size(tmp_path, dataset, make_model, make_config):
    trainer = Trainer(make_config(tmp_path, max_steps=1), make_model(), dataset)
    path = trainer.save_checkpoint()
    state = torch.load(path, weights_only=True)
    state["world_size"] = 4
    torch.save(state, path)
    try:
        trainer.load_checkpoint(path)
    except ValueError as error:
        assert "4 processes" in str(error)
    else:
        raise AssertionError("a checkpoint from 4 processes was accepted by 1")
