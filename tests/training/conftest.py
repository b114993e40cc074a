"""Small models and data shared by the training tests."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from longclip_diffusion.training import synthetic
from longclip_diffusion.training.config import TrainConfig
from longclip_diffusion.training.data import CaptionCollator


def tiny_model(seed: int = 0):
    """A 77-position two-tower CLIP small enough for many quick steps."""
    return synthetic.tiny_clip(max_positions=77, image_size=32, width=64, layers=1, seed=seed)


def small_config(output_dir, **overrides) -> TrainConfig:
    values = dict(
        batch_size=8, num_workers=0, max_steps=3, lr=1e-3, warmup_steps=1, output_dir=str(output_dir),
        save_every=0, log_every=1, progress=False, pcm_components=4, export=[],
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture()
def make_model():
    return tiny_model


@pytest.fixture()
def make_config():
    return small_config


@pytest.fixture(scope="session")
def scenes():
    return synthetic.make_scenes(48, seed=3)


@pytest.fixture(scope="session")
def dataset(scenes):
    return synthetic.SyntheticDataset(scenes, image_size=32)


@pytest.fixture()
def batch(dataset):
    torch.manual_seed(0)
    return CaptionCollator(248)([dataset[i] for i in range(8)])


@pytest.fixture
def run_two_processes():
    """Run ``worker(rank, port, *args)`` in two spawned processes (a free localhost port for gloo); fail, killing
    them, when they have not finished within ``seconds`` (a deadlock fails the test instead of hanging it)."""

    def run(worker, *args, seconds: float = 240) -> None:
        with socket.socket() as handle:
            handle.bind(("127.0.0.1", 0))
            port = handle.getsockname()[1]
        workers = mp.spawn(worker, args=(port, *args), nprocs=2, join=False)
        deadline = time.monotonic() + seconds
        while not workers.join(timeout=1):
            if time.monotonic() > deadline:
                for process in workers.processes:
                    process.kill()
                pytest.fail(f"the two gloo workers did not finish within {seconds} s")

    return run
