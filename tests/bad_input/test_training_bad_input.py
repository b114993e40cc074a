"""Bad input to training and evaluation: resume files, data files and rows, config values, the CLI.

One table: each case builds its input in a temporary folder, names the surface it goes through and expects either
an error (type + a phrase of its one-line message) or a sensible result (a check on what came back).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile

import pytest
import torch
from PIL import Image

from longclip_diffusion.checkpoints import CheckpointError
from longclip_diffusion.cli import main
from longclip_diffusion.files import DestinationExistsError
from longclip_diffusion.training import synthetic
from longclip_diffusion.training.config import ConfigError, TrainConfig, load_config
from longclip_diffusion.training.data import CaptionCollator, batches, load_dataset
from longclip_diffusion.training.export import export_model
from longclip_diffusion.training.trainer import CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, Trainer, read_checkpoint

CAPTION = "A red square on the left. Next to it a blue circle."


def tiny_model(layers: int = 1):
    return synthetic.tiny_clip(max_positions=77, image_size=32, width=64, layers=layers, seed=0)


def small_config(output_dir, **overrides) -> TrainConfig:
    values = dict(
        batch_size=4, num_workers=0, max_steps=2, lr=1e-3, warmup_steps=1, output_dir=str(output_dir),
        save_every=0, log_every=1, progress=False, pcm_components=2, export=[],
    )
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def dataset():
    return synthetic.SyntheticDataset(synthetic.make_scenes(8, seed=3), image_size=32)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, dataset):
    """A real checkpoint of one training step of the tiny model."""
    folder = tmp_path_factory.mktemp("good")
    trainer = Trainer(small_config(folder, max_steps=1), tiny_model(), dataset)
    trainer.train()
    return folder / CHECKPOINT_NAME


# ------------------------------------------------------------------------------------------------ inputs


def png(folder, name="a.png") -> str:
    Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / name)
    return name


def jsonl(folder, *rows, name="d.jsonl") -> list[str]:
    png(folder)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [str(folder / name)]


def good_row() -> dict:
    return {"image": "a.png", "long_caption": CAPTION}


def tar_shard(folder, samples: int = 4, captions: bool = True, caption: tuple[str, bytes] | None = None) -> str:
    """A shard of ``samples`` PNG + .txt pairs; ``caption`` (extension, bytes) replaces the first sample's caption."""
    path = folder / "shard.tar"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(buffer, format="PNG")
    with tarfile.open(path, "w") as archive:
        for index in range(samples):
            files = [(f"s/{index:04d}.png", buffer.getvalue())]
            if index == 0 and caption is not None:
                files.append((f"s/0000.{caption[0]}", caption[1]))
            elif captions:
                files.append((f"s/{index:04d}.txt", f"{CAPTION} {index}".encode()))
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return str(path)


def truncated_tar(folder, at_member_boundary: bool) -> str:
    path = tar_shard(folder, samples=8)
    with tarfile.open(path) as archive:
        members = archive.getmembers()
    middle = members[len(members) // 2]
    cut = middle.offset if at_member_boundary else middle.offset_data + middle.size // 2
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[:cut])
    return path


def write(folder, name: str, data: bytes | str) -> str:
    path = folder / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def checkpoint_file(folder, good_checkpoint, change) -> str:
    """A copy of the good checkpoint with ``change(state)`` applied (``change`` returns what to save)."""
    state = torch.load(good_checkpoint, weights_only=True)
    path = folder / "ckpt.pt"
    torch.save(change(state), path)
    return str(path)


class Code:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def dropped(state, key):
    del state[key]
    return state


def other_world_size(state):
    state["world_size"] = 4
    return state


def other_model_checkpoint(folder, dataset) -> str:
    trainer = Trainer(small_config(folder / "other", max_steps=1), tiny_model(layers=2), dataset)
    return str(trainer.save_checkpoint())


def run_folder_with(folder, good_checkpoint, latest: bytes | None, previous: bytes | None) -> dict:
    run = folder / "run"
    run.mkdir()
    for name, data in ((CHECKPOINT_NAME, latest), (PREVIOUS_CHECKPOINT_NAME, previous)):
        if data is not None:
            (run / name).write_bytes(data)
    return {"output_dir": str(run), "resume": "auto"}


def good_bytes(good_checkpoint) -> bytes:
    return good_checkpoint.read_bytes()


def yaml_file(folder, text: str, name: str = "run.yaml") -> str:
    return write(folder, name, text)


def cli_run(folder) -> list[str]:
    """A valid tiny ``longclip train`` invocation (base model folder, data) to which a case adds bad flags."""
    data = synthetic.write_dataset(folder / "data", synthetic.make_scenes(8, seed=2), image_size=32)
    base = folder / "base"
    synthetic.tiny_clip(image_size=32, layers=1).save_pretrained(str(base))
    return ["train", "--base-model", str(base), "--train-data", str(data), "--output-dir", str(folder / "run"),
            "--batch-size", "4", "--num-workers", "0", "--pcm-components", "2", "--no-progress", "--export", "openai"]


# ------------------------------------------------------------------------------------------------ the table

E = pytest.param
CASES = [
    # --- resume: explicit files
    E("resume", lambda f, g, d: {"resume": write(f, "zero.pt", b"")}, (CheckpointError, "is empty (0 bytes"), id="resume-zero-bytes"),
    E("resume", lambda f, g, d: {"resume": write(f, "half.pt", g.read_bytes()[: g.stat().st_size // 2])},
      (CheckpointError, "half.pt is truncated or not a torch file"), id="resume-truncated"),
    E("resume", lambda f, g, d: {"resume": write(f, "noise.pt", b"not a checkpoint" * 64)},
      (CheckpointError, "noise.pt is truncated or not a torch file"), id="resume-garbage"),
    E("resume", lambda f, g, d: {"resume": checkpoint_file(f, g, lambda s: tiny_model().state_dict())},
      (CheckpointError, "is not a longclip training checkpoint (found keys like"), id="resume-foreign-clip-state-dict"),
    E("resume", lambda f, g, d: {"resume": checkpoint_file(f, g, lambda s: dropped(s, "optimizer"))},
      (CheckpointError, "lacks optimizer"), id="resume-key-missing"),
    E("resume", lambda f, g, d: {"resume": checkpoint_file(f, g, lambda s: {**s, "extra": Code()})},
      (CheckpointError, "refused to unpickle code in"), id="resume-pickled-code"),
    E("resume", lambda f, g, d: {"resume": checkpoint_file(f, g, lambda s: [1, 2])},
      (CheckpointError, "holds a list, not a longclip training checkpoint"), id="resume-a-list"),
    E("resume", lambda f, g, d: {"resume": str(f)}, (CheckpointError, "does not exist (it is a folder)"), id="resume-folder"),
    E("resume", lambda f, g, d: {"resume": str(f / "nope.pt")}, (CheckpointError, "nope.pt does not exist"), id="resume-missing"),
    E("resume", lambda f, g, d: {"resume": checkpoint_file(f, g, other_world_size)},
      (ValueError, "written by 4 processes, this run has 1"), id="resume-other-world-size"),
    E("resume", lambda f, g, d: {"resume": other_model_checkpoint(f, d)},
      (CheckpointError, "does not fit this run"), id="resume-other-model-depth"),
    E("resume", lambda f, g, d: {"resume": checkpoint_file(f, g, lambda s: {**s, "step": "3"})},
      (CheckpointError, "damaged step"), id="resume-damaged-step"),
    # --- resume: auto
    E("resume", lambda f, g, d: run_folder_with(f, g, b"", b"\0" * 100),
      (CheckpointError, "no usable checkpoint in"), id="resume-auto-both-damaged"),
    E("resume", lambda f, g, d: run_folder_with(f, g, None, None), lambda trainer: trainer.step == 0, id="resume-auto-nothing-starts-at-0"),
    E("resume", lambda f, g, d: run_folder_with(f, g, g.read_bytes()[:100], g.read_bytes()),
      lambda trainer: trainer.step == 1, id="resume-auto-truncated-latest-uses-previous"),
    E("resume", lambda f, g, d: run_folder_with(f, g, None, g.read_bytes()),
      lambda trainer: trainer.step == 1, id="resume-auto-only-previous-left"),
    # --- data files and rows (load_dataset; max_bad_fraction 0 unless given)
    E("data", lambda f, g, d: (jsonl(f, good_row(), good_row(), '{"image": "a.png", "long_caption": "x"'), {}),
      (ValueError, "d.jsonl line 3: not valid JSON"), id="data-broken-jsonl-line-3"),
    E("data", lambda f, g, d: (jsonl(f, good_row(), "", "", '{"image": "a.png",}'), {}),
      (ValueError, "d.jsonl line 4: not valid JSON"), id="data-broken-jsonl-after-blank-lines"),
    E("data", lambda f, g, d: (jsonl(f, {"image": "a.png", "long_caption": ""}), {}),
      (ValueError, "line 1: 'long_caption' is empty"), id="data-empty-caption"),
    E("data", lambda f, g, d: (jsonl(f, {"image": "a.png", "long_caption": "   "}), {}),
      (ValueError, "'long_caption' is empty"), id="data-whitespace-caption"),
    E("data", lambda f, g, d: (jsonl(f, {"image": "a.png", "caption": 42}), {}),
      (ValueError, "'caption' is int '42', not text"), id="data-number-caption"),
    E("data", lambda f, g, d: (jsonl(f, {"image": "a.png", "long_caption": None}), {}),
      (ValueError, "'long_caption' is missing"), id="data-null-caption"),
    E("data", lambda f, g, d: (jsonl(f, {"image": "a.png", "long_caption": ["a", "b"]}), {}),
      (ValueError, "'long_caption' is list"), id="data-list-caption"),
    E("data", lambda f, g, d: (jsonl(f, {"image": "a.png", "long_caption": CAPTION, "short_caption": 7}), {}),
      (ValueError, "'short_caption' is int"), id="data-number-short-caption"),
    E("data", lambda f, g, d: (jsonl(f, {"image": "gone.png", "long_caption": CAPTION}), {}),
      (ValueError, "gone.png does not exist"), id="data-missing-image"),
    E("data", lambda f, g, d: (jsonl(f, {"image": 3, "long_caption": CAPTION}), {}),
      (ValueError, "'image' is int"), id="data-number-image"),
    E("data", lambda f, g, d: (jsonl(f, ["a.png", CAPTION]), {}), (ValueError, "expected an object"), id="data-row-is-a-list"),
    E("data", lambda f, g, d: ([write(f, "d.json", json.dumps({"image": "a.png"}))], {}),
      (ValueError, "expected a JSON list of samples"), id="data-json-not-a-list"),
    E("data", lambda f, g, d: ([write(f, "d.json", '[\n{"image": "a.png"},\n{"image" "b.png"}\n]')], {}),
      (ValueError, "d.json line 3 column 10: not valid JSON"), id="data-broken-json-file"),
    E("data", lambda f, g, d: ([png(f) and write(f, "d.json", json.dumps([{"id": "x7", "image": "a.png", "conversations": [{}]}]))], {}),
      (ValueError, "entry 1 (id 'x7'): expected the long caption in conversations[1]['value']"), id="data-sharegpt4v-short-conversation"),
    E("data", lambda f, g, d: ([write(f, "d.csv", "picture,long_caption\na.png,hello\n")], {}),
      (ValueError, "the CSV header has no 'image' column"), id="data-csv-without-image-column"),
    E("data", lambda f, g, d: ([png(f) and write(f, "d.csv", f"image,long_caption\na.png,{CAPTION}\na.png,x,extra\n")], {}),
      (ValueError, "d.csv line 3: 3 fields, the header has 2"), id="data-csv-extra-field"),
    E("data", lambda f, g, d: ([write(f, "d.jsonl", b"\xff\xfe\x00bad")], {}), (ValueError, "not UTF-8 text"), id="data-not-utf8"),
    E("data", lambda f, g, d: ([write(f, "d.jsonl", "\n\n")], {}), (ValueError, "no samples"), id="data-empty-file"),
    E("data", lambda f, g, d: ([write(f, "d.parquet", "x")], {}), (ValueError, "pass --data-format"), id="data-unknown-extension"),
    E("data", lambda f, g, d: ([str(f)], {}), (ValueError, "is a folder"), id="data-folder"),
    E("data", lambda f, g, d: ([str(f / "none.jsonl")], {}), (FileNotFoundError, "none.jsonl does not exist"), id="data-missing-file"),
    E("data", lambda f, g, d: ([truncated_tar(f, at_member_boundary=False)], {}),
      (ValueError, "the shard is truncated or damaged"), id="data-tar-truncated-inside-a-member"),
    E("data", lambda f, g, d: ([truncated_tar(f, at_member_boundary=True)], {}),
      (ValueError, "no end-of-archive marker after member"), id="data-tar-truncated-between-members"),
    E("data", lambda f, g, d: ([write(f, "z.tar", b"")], {}), (ValueError, "not an uncompressed tar archive"), id="data-tar-zero-bytes"),
    E("data", lambda f, g, d: ([tar_shard(f, captions=False)], {}),
      (ValueError, "member 's/0000.png': an image without a .txt or .json caption"), id="data-tar-image-without-caption"),
    E("data", lambda f, g, d: ([tar_shard(f, caption=("txt", b"  \n"))], {}),
      (ValueError, "member 's/0000.png': the .txt caption is empty"), id="data-tar-empty-caption"),
    E("data", lambda f, g, d: ([tar_shard(f, caption=("txt", b"caf\xe9"))], {}),
      (ValueError, "member 's/0000.png': its caption is not UTF-8 text"), id="data-tar-latin1-caption"),
    E("data", lambda f, g, d: ([tar_shard(f, caption=("json", b'{"caption": 3}'))], {}),
      (ValueError, "'caption' in its .json is int"), id="data-tar-json-number-caption"),
    E("data", lambda f, g, d: ([tar_shard(f, caption=("json", b'{"long_caption": "a cat", "short_caption": "cat"}'))], {}),
      lambda dataset: dataset.records[0].short_caption == "cat" and len(dataset) == 4, id="data-tar-json-captions"),
    E("data", lambda f, g, d: (jsonl(f, *[good_row()] * 99, {"image": "a.png", "caption": 5}), {"max_bad_fraction": 0.01}),
      lambda dataset: len(dataset) == 99 and len(dataset.skipped) == 1 and dataset.total == 100, id="data-1-bad-in-100-is-skipped"),
    E("data", lambda f, g, d: (jsonl(f, *[good_row()] * 98, *[{"image": "a.png"}] * 2), {"max_bad_fraction": 0.01}),
      (ValueError, "2 of 100 samples (2 %) cannot be used, more than --max-bad-fraction 0.01"), id="data-2-bad-in-100-fails"),
    E("data", lambda f, g, d: (jsonl(f, {"image": "a.png"}, good_row(), good_row()), {"skip_first": 1}),
      lambda dataset: len(dataset) == 2 and not dataset.skipped, id="data-bad-row-in-skip-first-is-not-counted"),
    # --- config values (file keys and flags, named as the user wrote them)
    E("config", lambda f, g, d: (yaml_file(f, "learning_rate: 1\n"), {}), (ValueError, "unknown option(s) learning_rate"), id="config-unknown-key"),
    E("config", lambda f, g, d: (None, {"lr": -1.0}), (ConfigError, "--lr: must be a positive number, got -1.0"), id="config-negative-lr-flag"),
    E("config", lambda f, g, d: (yaml_file(f, "lr: fast\n"), {}), (ConfigError, "lr (in "), id="config-lr-not-a-number-in-file"),
    E("config", lambda f, g, d: (yaml_file(f, "lr: 1e-5\n"), {}), lambda config: config.lr == 1e-5, id="config-yaml-1e-5-string-is-a-number"),
    E("config", lambda f, g, d: (None, {"max_steps": -1}), (ConfigError, "--max-steps: must be at least 0"), id="config-negative-steps"),
    E("config", lambda f, g, d: (yaml_file(f, 'batch_size: "8"\n'), {}),
      (ConfigError, "batch_size (in"), id="config-batch-size-string-in-file"),
    E("config", lambda f, g, d: (yaml_file(f, "epochs: true\n"), {}), (ConfigError, "expected a whole number, got True"), id="config-bool-for-int"),
    E("config", lambda f, g, d: (yaml_file(f, "train_data: 5\n"), {}),
      (ConfigError, "expected a string or a list of strings"), id="config-number-for-data"),
    E("config", lambda f, g, d: (None, {"data_format": "xml"}), (ConfigError, "--data-format: 'xml' is not one of"), id="config-bad-data-format-flag"),
    E("config", lambda f, g, d: (yaml_file(f, "data_format: xml\n"), {}), (ConfigError, "data_format (in"), id="config-bad-data-format-key"),
    E("config", lambda f, g, d: (None, {"export": ["onnx"]}), (ConfigError, "--export: 'onnx' is not one of"), id="config-bad-export"),
    E("config", lambda f, g, d: (None, {"max_bad_fraction": 2.0}), (ConfigError, "--max-bad-fraction: must be from 0 to 1"), id="config-fraction-above-1"),
    E("config", lambda f, g, d: (None, {"beta2": 1.0}), (ConfigError, "--beta2: must be in [0, 1)"), id="config-beta-1"),
    E("config", lambda f, g, d: (None, {"weight_decay": float("nan")}), (ConfigError, "--weight-decay: must be 0 or more"), id="config-nan"),
    E("config", lambda f, g, d: (yaml_file(f, "lr: [1\n"), {}), (ValueError, "cannot be parsed"), id="config-yaml-syntax"),
    E("config", lambda f, g, d: (yaml_file(f, "- lr\n"), {}), (ValueError, "expected a mapping"), id="config-yaml-list"),
    E("config", lambda f, g, d: (yaml_file(f, "lr = 1\n", name="run.ini"), {}), (ValueError, "unknown extension '.ini'"), id="config-ini-file"),
    E("config", lambda f, g, d: (str(f / "none.yaml"), {}), (FileNotFoundError, "none.yaml does not exist"), id="config-missing-file"),
    E("config", lambda f, g, d: (None, {"base_model": "m", "train_data": [str(f / "no.jsonl")], "check_inputs": True}),
      (ConfigError, "--train-data: data file"), id="config-missing-data-path"),
    E("config", lambda f, g, d: (yaml_file(f, "train_data: x.jsonl\n"), {"check_inputs": True}),
      (ConfigError, "--base-model: not given"), id="config-no-base-model"),
    E("config", lambda f, g, d: (None, {"base_model": "m", "train_data": jsonl(f, good_row()), "resume": "x.pt", "check_inputs": True}),
      (ConfigError, "--resume: checkpoint x.pt does not exist"), id="config-missing-resume-file"),
    # --- the command line: exit 2 and one line
    E("cli", lambda f, g, d: cli_run(f) + ["--lr", "-1"], "longclip train: error: --lr: must be a positive number", id="cli-negative-lr"),
    E("cli", lambda f, g, d: cli_run(f) + ["--train-data", str(f / "no.jsonl")], "--train-data: data file", id="cli-missing-data"),
    E("cli", lambda f, g, d: cli_run(f) + ["--resume", write(f, "zero.pt", b"")], "is empty (0 bytes", id="cli-zero-byte-resume"),
    E("cli", lambda f, g, d: cli_run(f) + ["--resume", write(f, "noise.pt", b"PK\x03\x04" + b"x" * 600)],
      "noise.pt is truncated or not a torch file", id="cli-garbage-resume"),
    E("cli", lambda f, g, d: cli_run(f) + ["--resume", checkpoint_file(f, g, lambda s: {**s, "extra": Code()})],
      "refused to unpickle code in", id="cli-pickled-code-resume"),
    E("cli", lambda f, g, d: cli_run(f) + ["--resume", checkpoint_file(f, g, lambda s: dropped(s, "rng"))],
      "lacks rng: it is damaged or from another program; pass another checkpoint to --resume", id="cli-key-missing-resume"),
    E("cli", lambda f, g, d: cli_run(f) + ["--train-data", truncated_tar(f, False)], "the shard is truncated", id="cli-truncated-tar"),
    E("cli", lambda f, g, d: ["eval", str(f), "--data", jsonl(f, good_row())[0], "--classes", write(f, "c.txt", "cat\n"),
                              "--template", "a photo"], "--template 'a photo': put {}", id="cli-eval-template-without-braces"),
]


def _run(surface: str, built, folder, dataset):
    if surface == "resume":
        trainer = Trainer(small_config(**{"output_dir": folder / "run", **built}), tiny_model(), dataset)
        trainer.resume()
        return trainer
    if surface == "data":
        paths, options = built
        return load_dataset(paths, 16, **options)
    path, flags = built
    return load_config(path, **flags)


@pytest.mark.parametrize("surface, build, expected", CASES)
def test_bad_training_input(surface, build, expected, tmp_path, good_checkpoint, dataset, capsys):
    built = build(tmp_path, good_checkpoint, dataset)
    if surface == "cli":
        capsys.readouterr()  # what building the input printed
        assert main(built) == 2
        error = capsys.readouterr().err.strip()
        assert expected in error and len(error.splitlines()) == 1, error
        return
    if isinstance(expected, tuple):
        error_type, phrase = expected
        with pytest.raises(error_type) as caught:
            _run(surface, built, tmp_path, dataset)
        message = str(caught.value)
        assert phrase in message and len(message.splitlines()) == 1, message
    else:
        assert expected(_run(surface, built, tmp_path, dataset))


# ------------------------------------------------------------------------------------------------ behaviour


def test_resume_auto_falls_back_to_the_previous_good_checkpoint(tmp_path, dataset, caplog):
    run = tmp_path / "run"
    Trainer(small_config(run, max_steps=2, save_every=1), tiny_model(), dataset).train()
    latest, previous = run / CHECKPOINT_NAME, run / PREVIOUS_CHECKPOINT_NAME
    assert read_checkpoint(latest)["step"] == 2 and read_checkpoint(previous)["step"] == 1
    good_model = read_checkpoint(previous)["model"]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 3])  # a run killed while copying, a full disk…

    resumed = Trainer(small_config(run, max_steps=3, resume="auto"), tiny_model(), dataset)
    with caplog.at_level(logging.INFO, logger="longclip_diffusion.training"):
        resumed.resume()
    assert resumed.step == 1
    for name, value in good_model.items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0)
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"{latest} is truncated" in m and f"falling back to {previous} (step 1)" in m for m in messages), messages
    assert f"resumed from step 1 ({previous})" in messages

    resumed.train()  # on to step 3: the new latest is written; the good previous one stays (the broken one goes)
    assert read_checkpoint(latest)["step"] == 3 and read_checkpoint(previous)["step"] == 1


def test_a_checkpoint_that_does_not_read_back_never_replaces_the_good_one(tmp_path, dataset, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(small_config(run, max_steps=1), tiny_model(), dataset)
    trainer.train()
    before = (run / CHECKPOINT_NAME).read_bytes()

    save = torch.save

    def short_write(state, path):  # e.g. a full disk: the write "succeeds" but half the file is missing
        buffer = io.BytesIO()
        save(state, buffer)
        open(path, "wb").write(buffer.getvalue()[:200])

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(CheckpointError, match="is truncated or not a torch file"):
        trainer.save_checkpoint()
    assert (run / CHECKPOINT_NAME).read_bytes() == before
    assert sorted(path.name for path in run.iterdir() if "partial" in path.name) == []


def test_truncated_tar_fails_instead_of_training_on_half(tmp_path, capsys):
    shard = truncated_tar(tmp_path, at_member_boundary=True)
    with tarfile.open(shard) as archive:  # what the old reader trained on, silently: the members before the cut
        assert 0 < len(archive.getmembers()) < 16
    argv = cli_run(tmp_path / "run") + ["--train-data", shard, "--max-steps", "1"]
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "shard.tar: no end-of-archive marker after member" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "run" / CHECKPOINT_NAME).exists()  # refused before any training


def _corrupt_one_image(data_file, count: int = 1) -> None:
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    for row in rows[:count]:
        (data_file.parent / row["image"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_images_are_replaced_counted_and_stop_the_run_past_the_limit(tmp_path, num_workers, caplog):
    data = synthetic.write_dataset(tmp_path / "data", synthetic.make_scenes(8, seed=2), image_size=32)
    _corrupt_one_image(data)
    dataset = load_dataset([str(data)], 32, max_bad_fraction=0.2)  # the file exists: found only when read
    config = small_config(tmp_path / "ok", max_steps=2, num_workers=num_workers, max_bad_fraction=0.2)
    with caplog.at_level(logging.INFO, logger="longclip_diffusion.training"):
        trainer = Trainer(config, tiny_model(), dataset)
        trainer.train()
    assert trainer.data_counts["images_replaced"] == 1
    assert any("replaced an unreadable sample" in r.getMessage() and "data.jsonl line 1" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage().startswith("data: 0 of 8 samples skipped when read, 1 unreadable images replaced") for r in caplog.records)
    strict = Trainer(small_config(tmp_path / "strict", max_steps=2, num_workers=num_workers, max_bad_fraction=0.0), tiny_model(), dataset)
    with pytest.raises(ValueError) as caught:
        strict.train()
    assert "1 of 8 samples cannot be used" in str(caught.value) and "--max-bad-fraction 0" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1 and "DataLoader worker" not in str(caught.value)


def test_eval_refuses_an_unreadable_image_in_one_line(tmp_path, capsys):
    data = synthetic.write_dataset(tmp_path / "data", synthetic.make_scenes(8, seed=2), image_size=32)
    _corrupt_one_image(data)
    model = tmp_path / "model"
    synthetic.tiny_clip(image_size=32, layers=1).save_pretrained(str(model))
    capsys.readouterr()
    assert main(["eval", str(model), "--data", str(data), "--num-workers", "2"]) == 2
    error = capsys.readouterr().err.strip()
    assert "data.jsonl line 1: image" in error and "cannot be read" in error and len(error.splitlines()) == 1, error


def test_captions_longer_than_the_context_are_cut_and_counted():
    long_text = " ".join(["word"] * 300)
    batch = CaptionCollator(248)([(torch.zeros(3, 4, 4), long_text, "short"), (torch.zeros(3, 4, 4), "fits", "short")])
    assert (batch["long_cut"], batch["short_cut"]) == (1, 0)
    assert batch["long_ids"][0, -1] == 49407 and batch["long_ids"][1, 2] == 49407  # end-of-text kept last when cut


def test_export_refuses_a_folder_it_did_not_write(tmp_path, dataset):
    mine = tmp_path / "run" / "export" / "transformers"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own work")
    with pytest.raises(DestinationExistsError, match="was not written by a longclip export"):
        export_model(tiny_model(), tmp_path / "run" / "export", ["openai", "transformers"])
    assert (mine / "notes.txt").read_text() == "my own work"
    assert not (tmp_path / "run" / "export" / "longclip.pt").exists()


class _FailingDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise FileNotFoundError(f"shard-{index}.tar vanished while training")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_error_raised_in_a_worker_stays_one_line(num_workers):
    loader = torch.utils.data.DataLoader(_FailingDataset(), batch_size=2, num_workers=num_workers)
    with pytest.raises(FileNotFoundError) as caught:
        list(batches(loader))
    assert str(caught.value) in {f"shard-{i}.tar vanished while training" for i in range(4)}
