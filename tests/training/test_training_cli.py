"""``longclip train`` / ``longclip eval`` end to end on a tiny synthetic dataset written to disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from longclip_diffusion.cli import main
from longclip_diffusion.training import synthetic


def write_run(folder, num_scenes: int, extra: str = ""):
    """A tiny synthetic data set, a tiny base CLIP and a run config in ``folder``: ``(config, data)``."""
    data = synthetic.write_dataset(folder / "data", synthetic.make_scenes(num_scenes, seed=2), image_size=32)
    base = folder / "base"
    synthetic.tiny_clip(image_size=32, layers=1).save_pretrained(str(base))
    config = folder / "run.yaml"
    config.write_text(f"base_model: {base}\ntrain_data: {data}\nbatch_size: 8\nnum_workers: 0\nlr: 1.0e-4\n"
                      "warmup_steps: 1\npcm_components: 4\nprogress: false\n" + extra)
    return config, data


def test_train_then_eval(tmp_path, capsys):
    config, data = write_run(tmp_path, 16)
    output = tmp_path / "run"
    assert main(["train", "--config", str(config), "--max-steps", "2", "--output-dir", str(output)]) == 0
    assert (output / "config.yaml").is_file() and (output / "checkpoint-latest.pt").is_file()
    assert len((output / "metrics.jsonl").read_text().splitlines()) == 1  # log_every=10: only the final step
    for path in ("export/longclip.pt", "export/longclip-text.safetensors", "export/diffusers/text_encoder", "export/transformers"):
        assert (output / path).exists(), path
    capsys.readouterr()
    result_path = tmp_path / "eval.json"
    assert main(["eval", str(output / "export/longclip.pt"), "--data", str(data), "--output", str(result_path)]) == 0
    results = json.loads(result_path.read_text())
    assert set(results) == {"long", "short"} and set(results["long"]) >= {"i2t@1", "t2i@5", "i2t@10"}
    assert json.loads(capsys.readouterr().out) == results


def test_zero_shot_classification(tmp_path, capsys):
    scenes = synthetic.make_scenes(8, seed=4)
    data = synthetic.write_dataset(tmp_path, scenes, image_size=32)
    lines = [dict(json.loads(line), label=scene.main.shape) for line, scene in zip(data.read_text().splitlines(), scenes)]
    data.write_text("\n".join(json.dumps(line) for line in lines))
    (tmp_path / "classes.txt").write_text("\n".join(synthetic.SHAPES) + "\n")
    model = tmp_path / "model"
    synthetic.tiny_clip(image_size=32, layers=1).save_pretrained(str(model))
    args = ["eval", str(model), "--data", str(data), "--classes", str(tmp_path / "classes.txt"), "--template", "a large {}."]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert 0 <= results["top1"] <= results["top5"] == 100.0  # 4 classes: top-5 always holds the right one


def test_bad_config_is_reported(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("learning_rate = 1\n")
    assert main(["train", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "unknown option(s) learning_rate" in capsys.readouterr().err


@pytest.mark.slow
def test_train_under_torchrun_with_two_processes(tmp_path):
    """The real launcher: `torchrun --nproc_per_node 2 … longclip train` joins a gloo group, trains, exports once."""
    config, _ = write_run(tmp_path, 32, extra="export: [openai]\n")
    output = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "longclip_diffusion.cli", "train", "--config", str(config), "--max-steps", "2",
               "--output-dir", str(output)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    state = torch.load(output / "checkpoint-latest.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 2
    assert (output / "export" / "longclip.pt").is_file()
    assert finished.stdout.count("openai: ") == 1  # rank 0 alone exports and reports


def test_train_help_shows_only_real_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for empty in ("(default: None)", "(default: )", "(default: [])", "(default: ''"):
        assert empty not in text
    assert "(default: 1e-06)" in text and "(default: openai diffusers transformers comfy)" in text
    assert "--max-bad-fraction" in text and "(default: 0.01)" in text


def test_resume_auto_says_which_step_and_file(tmp_path, capsys):
    config, _ = write_run(tmp_path, 16, extra="export: [openai]\n")
    output = tmp_path / "run"
    assert main(["train", "--config", str(config), "--max-steps", "1", "--output-dir", str(output)]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--max-steps", "2", "--output-dir", str(output), "--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert f"INFO: resumed from step 1 ({output / 'checkpoint-latest.pt'})" in err
    assert "INFO: data: 0 of 16 samples skipped when read" in err
    assert torch.load(output / "checkpoint-previous.pt", weights_only=True)["step"] == 1


def test_eval_shows_a_progress_bar_on_stderr(tmp_path, capsys):
    from longclip_diffusion.training.evaluate import encode_images_and_texts

    dataset = synthetic.SyntheticDataset(synthetic.make_scenes(6, seed=1), image_size=32)
    encode_images_and_texts(synthetic.tiny_clip(image_size=32, layers=1), dataset, batch_size=2, progress=True)
    captured = capsys.readouterr()
    assert "eval" in captured.err and "3/3" in captured.err and captured.out == ""
