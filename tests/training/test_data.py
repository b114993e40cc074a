"""Record readers, CLIP preprocessing without torchvision, the resumable sampler, config files."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from longclip_diffusion.training.config import load_config
from longclip_diffusion.training.data import ResumableSampler, load_dataset, preprocess_image, read_records

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
