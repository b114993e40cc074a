"""Bad inputs of text-only training, FSDP selection and OpenCLIP bases: one table of (input, surface, expected error
type and a phrase of its message, or the sensible result)."""

from __future__ import annotations

import shutil

import pytest
import torch

from longclip_diffusion import checkpoints
from longclip_diffusion.training import synthetic
from longclip_diffusion.training.config import ConfigError, TrainConfig
from longclip_diffusion.training.feature_cache import CachedFeatureDataset, build_feature_cache
from longclip_diffusion.training.trainer import Trainer


def tiny():
    return synthetic.tiny_clip(max_positions=77, image_size=32, width=64, layers=1)


def data():
    return synthetic.SyntheticDataset(synthetic.make_scenes(16, seed=3), image_size=32)


def config(tmp_path, **overrides):
    values = dict(batch_size=8, num_workers=0, max_steps=1, lr=1e-3, warmup_steps=1, output_dir=str(tmp_path / "run"),
                  progress=False, pcm_components=4, export=[], feature_cache=str(tmp_path / "cache"))
    return TrainConfig(**{**values, **overrides})


def bad_parallel(tmp_path):
    config(tmp_path, parallel="zero")


def bad_activation(tmp_path):
    config(tmp_path, hidden_act="relu")


def bad_activation_for_a_file(tmp_path):
    path = tmp_path / "clip.safetensors"
    checkpoints.save_openai_file(tiny(), path)
    checkpoints.load_clip_model(path, hidden_act="swish")


def resume_across_modes(written_text_only: bool):
    def run(tmp_path):
        Trainer(config(tmp_path, text_only=written_text_only), tiny(), data()).train()
        Trainer(config(tmp_path, text_only=not written_text_only, resume="auto"), tiny(), data()).train()
    return run


def damaged_shard(tmp_path):
    """A shard that does not read (a killed copy, a full disk): computed again, the cache then whole and right."""
    first = build_feature_cache(tiny(), data(), tmp_path, batch_size=8, shard_size=8)
    features = first.load()[0]
    first.shard_path(1).write_bytes(first.shard_path(1).read_bytes()[:100])
    again = build_feature_cache(tiny(), data(), tmp_path, batch_size=8, shard_size=8)
    torch.testing.assert_close(again.load()[0], features)


def foreign_shard(tmp_path):
    """A shard of another cache copied in by hand: not this cache's key, so computed again rather than read."""
    ours = build_feature_cache(tiny(), data(), tmp_path, batch_size=8, shard_size=8)
    features = ours.load()[0]
    other = tiny()
    with torch.no_grad():
        other.visual_projection.weight.mul_(2)
    theirs = build_feature_cache(other, data(), tmp_path, batch_size=8, shard_size=8)
    shutil.copyfile(theirs.shard_path(0), ours.shard_path(0))
    again = build_feature_cache(tiny(), data(), tmp_path, batch_size=8, shard_size=8)
    torch.testing.assert_close(again.load()[0], features)


def cache_of_another_size(tmp_path):
    CachedFeatureDataset(data(), torch.zeros(3, 64), [""] * 3)


CASES = [
    ("parallel: zero", bad_parallel, ConfigError, "parallel: 'zero' is not one of ddp, fsdp"),
    ("hidden_act: relu", bad_activation, ConfigError, "hidden_act: 'relu' is not one of auto, gelu, quick_gelu"),
    ("load_clip_model(hidden_act='swish')", bad_activation_for_a_file, ValueError, "hidden_act must be one of"),
    ("text-only checkpoint resumed by a full run", resume_across_modes(True), checkpoints.CheckpointError,
     "written by a text-only ddp run, this one is full ddp"),
    ("full checkpoint resumed by a text-only run", resume_across_modes(False), checkpoints.CheckpointError,
     "written by a full ddp run, this one is text-only ddp"),
    ("truncated cache shard", damaged_shard, None, "recomputed"),
    ("another cache's shard in this cache", foreign_shard, None, "recomputed"),
    ("cached features for another data set", cache_of_another_size, ValueError, "holds 3 samples, the data set 16"),
]


@pytest.mark.parametrize(("case", "action", "error", "phrase"), CASES, ids=[case[0] for case in CASES])
def test_bad_input(tmp_path, case, action, error, phrase):
    torch.set_num_threads(1)
    if error is None:
        action(tmp_path)  # the sensible result is asserted inside
        return
    with pytest.raises(error) as caught:
        action(tmp_path)
    message = str(caught.value)
    assert phrase in message and "\n" not in message, message
