"""Text-only training on cached image features: the same losses and text weights as the full loop with a frozen
vision tower; a cache keyed by model, preprocessing and data; resume mid-cache and mid-training."""

from __future__ import annotations

import json

import pytest
import torch

from test_bigg import tiny_bigg_clip

from longclip_diffusion import checkpoints
from longclip_diffusion.cli import main
from longclip_diffusion.training import feature_cache, synthetic
from longclip_diffusion.training.feature_cache import build_feature_cache, freeze_vision_tower
from longclip_diffusion.training.trainer import Trainer


def logged_losses(run_dir) -> list[tuple[float, float, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(entry["loss"], entry["loss_long"], entry["loss_short"]) for entry in map(json.loads, lines)]


def text_weights(model) -> dict[str, torch.Tensor]:
    return {
        name: value for name, value in model.state_dict().items()
        if name.startswith(("text_model.", "text_projection.", "logit_scale"))
    }


@pytest.mark.parametrize("pcm", ["local", "global"])
def test_text_only_equals_the_full_loop_with_a_frozen_vision_tower(tmp_path, dataset, make_model, make_config, pcm):
    data = torch.utils.data.Subset(dataset, range(24))
    full_model = make_model()
    freeze_vision_tower(full_model)
    full = Trainer(make_config(tmp_path / "full", max_steps=4, pcm=pcm), full_model, data)
    full.train()
    text_only = Trainer(
        make_config(tmp_path / "text", max_steps=4, pcm=pcm, text_only=True, feature_cache=str(tmp_path / "cache")),
        make_model(), data,
    )
    text_only.train()
    assert len(logged_losses(tmp_path / "full")) == 4
    for full_step, text_step in zip(logged_losses(tmp_path / "full"), logged_losses(tmp_path / "text")):
        assert full_step == pytest.approx(text_step, abs=1e-5)
    trained, reference = text_weights(text_only.model), text_weights(full.model)
    assert trained.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(trained[name], value, atol=1e-5, rtol=0, msg=lambda message: f"{name}: {message}")
    # the text weights did move, and the vision tower did not
    initial = make_model().state_dict()
    assert [name for name, value in reference.items() if name in initial and (value - initial[name]).abs().max() > 1e-4]
    for name, value in make_model().vision_model.state_dict().items():
        torch.testing.assert_close(text_only.model.vision_model.state_dict()[name].cpu(), value)


def test_cache_is_keyed_by_model_preprocessing_and_precision(tmp_path, dataset, make_model):
    data = torch.utils.data.Subset(dataset, range(16))
    model = make_model()
    first = build_feature_cache(model, data, tmp_path, batch_size=8, shard_size=8)
    features, problems = first.load()
    assert features.shape == (16, 64) and problems == [""] * 16
    assert build_feature_cache(model, data, tmp_path, batch_size=8, shard_size=8).directory == first.directory
    # the same features as the model computes directly
    with torch.no_grad():
        pixels = torch.stack([data[i][0] for i in range(16)])
        direct = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    torch.testing.assert_close(features, direct, atol=1e-6, rtol=1e-5)
    # another vision weight → another cache (the old one is not reused)
    changed = make_model()
    with torch.no_grad():
        changed.visual_projection.weight[0, 0] += 1e-3
    other_model = build_feature_cache(changed, data, tmp_path, batch_size=8, shard_size=8)
    assert other_model.directory != first.directory
    assert (other_model.load()[0] - features).abs().max() > 0
    # a text weight is not part of the key: text-only training changes it every step
    text_changed = make_model()
    with torch.no_grad():
        text_changed.text_projection.weight[0, 0] += 1.0
    assert build_feature_cache(text_changed, data, tmp_path, batch_size=8, shard_size=8).directory == first.directory
    # another preprocessing (image size) → another cache, with other features
    resized = type(dataset)(dataset.scenes, image_size=40)
    assert feature_cache.cache_key(feature_cache.cache_description(model, resized, "fp32")) != feature_cache.cache_key(
        feature_cache.cache_description(model, dataset, "fp32")
    )
    # another precision → another cache
    assert build_feature_cache(model, data, tmp_path, precision="bf16", batch_size=8, shard_size=8).directory != first.directory


class Killed(Exception):
    pass


def test_cache_resumes_mid_build(tmp_path, dataset, make_model, monkeypatch):
    data = torch.utils.data.Subset(dataset, range(24))
    model = make_model()
    written: list[int] = []
    kill_after = [2]
    original_write = feature_cache.FeatureCache.write_shard

    def write_then_die(self, index, features, problems):
        original_write(self, index, features, problems)
        written.append(index)
        if len(written) == kill_after[0]:
            raise Killed  # the job is killed after two shards

    monkeypatch.setattr(feature_cache.FeatureCache, "write_shard", write_then_die)
    with pytest.raises(Killed):
        build_feature_cache(model, data, tmp_path / "cache", batch_size=4, shard_size=8)
    assert written == [0, 1]
    written.clear()
    kill_after[0] = 0
    resumed = build_feature_cache(model, data, tmp_path / "cache", batch_size=4, shard_size=8)
    assert written == [2]  # only the missing shard is computed
    fresh = build_feature_cache(model, data, tmp_path / "fresh", batch_size=8, shard_size=8)
    torch.testing.assert_close(resumed.load()[0], fresh.load()[0], atol=1e-6, rtol=1e-5)
    # a damaged shard is computed again, not read
    resumed.shard_path(1).write_bytes(b"not a safetensors file")
    written.clear()
    build_feature_cache(model, data, tmp_path / "cache", batch_size=4, shard_size=8)
    assert written == [1]


def test_text_only_resumes_mid_training(tmp_path, dataset, make_model, make_config):
    data = torch.utils.data.Subset(dataset, range(24))
    cache = str(tmp_path / "cache")
    straight = Trainer(make_config(tmp_path / "straight", max_steps=4, text_only=True, feature_cache=cache), make_model(), data)
    straight.train()
    first = Trainer(make_config(tmp_path / "resumed", max_steps=4, text_only=True, feature_cache=cache), make_model(), data)
    first.train(stop_at=2)
    # the vision tower comes from the base model (checkpoints leave it out: it is frozen), the rest from the checkpoint
    other_text = make_model(seed=1)
    for name, module in feature_cache.vision_modules(make_model()).items():
        getattr(other_text, name).load_state_dict(module.state_dict())
    resumed = Trainer(
        make_config(tmp_path / "resumed", max_steps=4, text_only=True, feature_cache=cache, resume="auto"),
        other_text, data,
    )
    resumed.train()
    assert resumed.step == 4
    for name, value in text_weights(straight.model).items():
        torch.testing.assert_close(text_weights(resumed.model)[name], value, atol=1e-6, rtol=1e-5)
    assert sum(logged_losses(tmp_path / "resumed"), ()) == pytest.approx(sum(logged_losses(tmp_path / "straight"), ()), abs=1e-6)
    assert not any(key.startswith("vision_model.") for key in torch.load(tmp_path / "resumed" / "checkpoint-latest.pt", weights_only=True)["model"])


def test_cli_text_only_from_an_openclip_file(tmp_path):
    """``longclip train --text-only`` end to end: an OpenCLIP-layout base file, images from disk, the cache in
    OUTPUT_DIR/feature-cache, exports; a second run with the same model and data reuses the cache."""
    data = synthetic.write_dataset(tmp_path / "data", synthetic.make_scenes(16, seed=2), image_size=32)
    base = tmp_path / "open_clip_model.safetensors"
    checkpoints.save_openai_file(tiny_bigg_clip(), base)
    arguments = ["train", "--base-model", str(base), "--train-data", str(data), "--batch-size", "8", "--num-workers", "0",
                 "--max-steps", "2", "--warmup-steps", "1", "--pcm-components", "4", "--no-progress", "--text-only",
                 "--export", "sdxl", "comfy_g"]
    assert main([*arguments, "--output-dir", str(tmp_path / "run")]) == 0
    caches = list((tmp_path / "run" / "feature-cache").iterdir())
    assert len(caches) == 1 and len(list(caches[0].glob("shard-*.safetensors"))) == 1
    assert (tmp_path / "run/export/sdxl/text_encoder_2/config.json").is_file()
    assert (tmp_path / "run/export/longclip-g.safetensors").is_file()
    shard = caches[0] / "shard-00000.safetensors"
    written = shard.stat().st_mtime_ns
    assert main([*arguments, "--output-dir", str(tmp_path / "run2"), "--feature-cache", str(tmp_path / "run" / "feature-cache")]) == 0
    assert shard.stat().st_mtime_ns == written  # reused, not recomputed
