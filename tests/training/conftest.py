"""Small models and data shared by the training tests."""

from __future__ import annotations

import pytest
import torch

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
