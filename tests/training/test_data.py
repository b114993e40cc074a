"""Record readers, CLIP preprocessing without torchvision (and its faster decode), the resumable sampler, loader
workers, config files."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from longclip_diffusion.training.config import TrainConfig, load_config
from longclip_diffusion.training import synthetic
from longclip_diffusion.training.data import (
    CLIP_STD,
    ResumableSampler,
    load_dataset,
    open_image,
    preprocess_image,
    read_records,
)
from longclip_diffusion.training.trainer import Trainer

GREY_LEVEL = 1 / 255 / min(CLIP_STD)  # one 8-bit level in CLIP-normalised units (0.0146)

LONG = "A red square on the left. Next to it a blue circle, and far away a green triangle."


def test_preprocessing_matches_transformers_clip_processor():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = torch.as_tensor(np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0]))
    ours = preprocess_image(image, 32)
    assert ours.shape == (3, 32, 32)
    torch.testing.assert_close(ours, expected, atol=0.05, rtol=0)  # resampling kernels differ by a grey level or so
    assert (ours - expected).abs().mean() < 0.01


def photo(width: int, height: int) -> Image.Image:
    """Smooth gradients with texture: what a photo's JPEG looks like to the decoder (noise would not be)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    channels = [128 + 100 * np.sin(x / (40 + 15 * c) + y / (60 - 10 * c)) + rng.normal(0, 6, (height, width)) for c in range(3)]
    return Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))


def resize_then_crop(image: Image.Image, size: int) -> torch.Tensor:
    """CLIP's preprocessing as the reference writes it: resize the whole image (bicubic), then crop the centre."""
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    resized = image.convert("RGB").resize(new_size, Image.Resampling.BICUBIC)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    pixels = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array(CLIP_STD)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).astype(np.float32))


@pytest.mark.parametrize("size", [(80, 48), (48, 80), (333, 200), (224, 224)])
def test_resampling_the_crop_box_equals_resize_then_crop(size):
    image = photo(*size)
    torch.testing.assert_close(preprocess_image(image, 32), resize_then_crop(image, 32), atol=1.01 * GREY_LEVEL, rtol=0)


def test_large_jpegs_decode_at_a_reduced_scale_within_three_grey_levels(tmp_path):
    photo(2250, 1500).save(tmp_path / "large.jpg", quality=90)
    photo(800, 600).save(tmp_path / "small.jpg", quality=90)
    photo(2250, 1500).save(tmp_path / "large.png")
    assert open_image(str(tmp_path / "large.jpg"), 224).size == (1125, 750)  # 1/2: the short side stays >= 448
    assert open_image(str(tmp_path / "small.jpg"), 224).size == (800, 600)  # under 4 × 224: decoded in full
    assert open_image(str(tmp_path / "large.png"), 224).size == (2250, 1500)  # no draft mode outside JPEG
    full = preprocess_image(open_image(str(tmp_path / "large.jpg")), 224)
    reduced = preprocess_image(open_image(str(tmp_path / "large.jpg"), 224), 224)
    assert 0 < (reduced - full).abs().max() <= 3 * GREY_LEVEL
    assert (reduced - full).abs().mean() < 0.5 * GREY_LEVEL


def test_loader_workers_train_exactly_as_the_main_process_across_epochs(tmp_path):
    """Persistent workers, images stacked in shared memory: the same batches, so the same weights after two epochs."""
    lines = []
    for index in range(12):
        name = f"{index}.{'jpg' if index % 2 else 'png'}"
        photo(40 + 4 * index, 36).save(tmp_path / name)
        lines.append(json.dumps({"image": name, "caption": f"photo number {index}. It has {index} stripes of colour."}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    weights = []
    for workers in (0, 2):
        dataset = load_dataset([str(tmp_path / "data.jsonl")], image_size=32)
        model = synthetic.tiny_clip(image_size=32, width=64, layers=1)
        config = dict(batch_size=4, max_steps=6, lr=1e-3, warmup_steps=1, pcm_components=2, export=[], progress=False)
        trainer = Trainer(TrainConfig(num_workers=workers, output_dir=str(tmp_path / str(workers)), **config), model, dataset)
        assert trainer.sampler.batches_per_epoch == 3
        weights.append(trainer.train().state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


@pytest.fixture()
def image_file(tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    return "a.png"


def test_sharegpt4v_json(tmp_path, image_file):
    path = tmp_path / "share.json"
    path.write_text(json.dumps([{"id": "1", "image": image_file, "conversations": [
        {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": LONG}]}]))
    (record,) = read_records(path)
    assert record.long_caption == LONG and record.short_caption == "A red square on the left"
    assert record.image == str(tmp_path / image_file)


def test_jsonl_and_csv_with_optional_short_caption(tmp_path, image_file):
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": image_file, "long_caption": LONG, "short_caption": "red"}) + "\n")
    (tmp_path / "d.csv").write_text(f'image,long_caption,short_caption\n{image_file},"{LONG}",\n')
    assert read_records(tmp_path / "d.jsonl")[0].short_caption == "red"
    assert read_records(tmp_path / "d.csv")[0].short_caption == "A red square on the left"
    dataset = load_dataset([str(tmp_path / "d.jsonl"), str(tmp_path / "d.csv")], image_size=16)
    pixels, long, _, problem = dataset[1]
    assert len(dataset) == 2 and pixels.shape == (3, 16, 16) and long == LONG and problem == ""


def test_tar_shard(tmp_path):
    path = tmp_path / "shard-000.tar"
    with tarfile.open(path, "w") as archive:
        for key, colour in (("s/0001", (255, 0, 0)), ("s/0002", (0, 0, 255))):
            buffer = io.BytesIO()
            Image.new("RGB", (20, 20), colour).save(buffer, format="PNG")
            for name, data in ((f"{key}.png", buffer.getvalue()), (f"{key}.txt", f"{LONG} {key}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    dataset = load_dataset([str(path)], image_size=8)
    assert [r.long_caption for r in dataset.records] == [f"{LONG} s/0001", f"{LONG} s/0002"]
    red, blue = dataset[0][0], dataset[1][0]
    assert red[0].mean() > red[2].mean() and blue[2].mean() > blue[0].mean()


def test_missing_caption_is_reported_with_the_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text("\n" + json.dumps({"image": "x.png"}) + "\n")
    (entry,) = read_records(tmp_path / "bad.jsonl")
    assert str(entry) == f"{tmp_path / 'bad.jsonl'} line 2: has neither 'long_caption' nor 'caption' (nor a 'label')"
    with pytest.raises(ValueError, match=r"1 of 1 samples .* cannot be used.*bad.jsonl line 2: has neither"):
        load_dataset([str(tmp_path / "bad.jsonl")], image_size=16)


def test_sampler_splits_ranks_and_resumes_mid_epoch():
    ranks = [list(ResumableSampler(20, 3, rank, 2, seed=1)) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 9 and not set(ranks[0]) & set(ranks[1])
    sampler = ResumableSampler(20, 3, 0, 2, seed=1)
    sampler.set_position(0, 2)
    assert list(sampler) == ranks[0][6:]
    sampler.set_position(1, 0)
    assert list(sampler) != ranks[0]  # a new shuffle each epoch


def test_config_from_yaml_and_toml_with_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 2.0e-6\npcm: global\ntrain_data: a.json\n")
    (tmp_path / "c.toml").write_text('lr = 3e-6\nexport = ["openai"]\n')
    config = load_config(tmp_path / "c.yaml", batch_size=16, pcm=None)
    assert (config.lr, config.pcm, config.train_data, config.batch_size) == (2e-6, "global", ["a.json"], 16)
    assert load_config(tmp_path / "c.toml").export == ["openai"]
    (tmp_path / "bad.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown option"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="--pcm: 'sometimes' is not one of"):
        load_config(pcm="sometimes")
