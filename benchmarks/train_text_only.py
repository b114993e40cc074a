"""Per-step time and peak memory of the full Long-CLIP step (both towers) against the text-only step (cached image
features, text tower only), at tiny shapes and at CLIP-L's real shapes (ViT-L/14 + 768-wide 12-layer text, 248
positions), random weights. Each (shape, mode) runs in a fresh process, so its peak memory is its own.

    python benchmarks/train_text_only.py                          # tiny and L, CPU, one thread
    python benchmarks/train_text_only.py --shapes tiny --batch-size 32 --steps 5

Steps go through ``Trainer.train_step`` (loss, backward, AdamW) on one prepared batch: data loading and the one-off
feature caching are not timed. Peak memory is the process's peak resident set on CPU, ``max_memory_allocated`` on
CUDA. Long captions are 160 tokens, short ones 14.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.data import Dataset
from transformers import CLIPConfig, CLIPModel

from longclip_diffusion.training import synthetic
from longclip_diffusion.training.config import TrainConfig
from longclip_diffusion.training.trainer import Trainer

LONG_WORDS, SHORT_WORDS = 158, 12  # + start and end of text


def vit_l14_clip(seed: int = 0) -> CLIPModel:
    """OpenAI ViT-L/14's shapes (random weights): vision 1024 × 24 layers at 224 px, text 768 × 12 layers."""
    torch.manual_seed(seed)
    text = dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )
    vision = dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
        patch_size=14, hidden_act="quick_gelu",
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768))


def build_model(shape: str) -> CLIPModel:
    if shape == "tiny":
        return synthetic.tiny_clip(width=64, layers=2)
    return vit_l14_clip()


class RandomCaptions(Dataset):
    """Random pixels with a long and a short caption of fixed lengths (``"a a a …"``: one CLIP token a word)."""

    def __init__(self, size: int, image_size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(size, 3, image_size, image_size, generator=generator)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        return self.pixels[index], " ".join(["a"] * LONG_WORDS), " ".join(["a"] * SHORT_WORDS)


def measure(shape: str, mode: str, batch_size: int, steps: int, warmup: int, precision: str, checkpointing: bool) -> dict:
    model = build_model(shape)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = RandomCaptions(batch_size, model.config.vision_config.image_size)
    with tempfile.TemporaryDirectory() as output:
        config = TrainConfig(
            batch_size=batch_size, num_workers=0, output_dir=output, progress=False, export=[], lr=1e-5,
            max_steps=steps + warmup, warmup_steps=1, precision=precision, pcm_components=8,
            gradient_checkpointing=checkpointing, text_only=mode == "text-only",
        )
        trainer = Trainer(config, model, dataset)
        batch = trainer.loader.collate_fn([trainer.loader.dataset[i] for i in range(batch_size)])
        for _ in range(warmup):
            trainer.train_step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "shape": shape, "mode": mode, "device": device, "batch_size": batch_size, "precision": precision,
        "ms_per_step": round(seconds * 1000, 1), "samples_per_s": round(batch_size / seconds, 2),
        "peak_mib": round(peak / 2**20), "trained_parameters_m": round(trained / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "L"], choices=("tiny", "L"))
    parser.add_argument("--modes", nargs="+", default=["full", "text-only"], choices=("full", "text-only"))
    parser.add_argument("--batch-size", type=int, default=0, help="default: 32 for tiny, 2 for L")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "MODE"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        shape, mode = args.one
        batch = args.batch_size or (32 if shape == "tiny" else 2)
        row = measure(shape, mode, batch, args.steps, args.warmup, args.precision, args.gradient_checkpointing)
        print(json.dumps(row))
        return
    rows = []
    for shape in args.shapes:
        for mode in args.modes:
            command = [sys.executable, __file__, "--one", shape, mode, "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--precision", args.precision, "--threads", str(args.threads),
                       "--batch-size", str(args.batch_size)]
            if args.gradient_checkpointing:
                command.append("--gradient-checkpointing")
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{row['shape']:>4} {row['mode']:>9}  batch {row['batch_size']:>3}  {row['ms_per_step']:>9.1f} ms/step  "
                  f"{row['samples_per_s']:>8.2f} samples/s  peak {row['peak_mib']:>6} MiB  "
                  f"trained {row['trained_parameters_m']} M params  ({row['device']}, {row['precision']})", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
