"""Training throughput (samples/s) and peak memory of one Long-CLIP step, tiny model, synthetic long captions.

    python benchmarks/train_throughput.py                       # CPU, tiny model
    python benchmarks/train_throughput.py --batch-size 64 --steps 20 --precision bf16

On CUDA, peak memory is ``torch.cuda.max_memory_allocated``; on CPU it is the process's peak resident set size.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch

from longclip_diffusion.training import synthetic
from longclip_diffusion.training.config import TrainConfig
from longclip_diffusion.training.data import CaptionCollator
from longclip_diffusion.training.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--pcm", default="local", choices=("local", "global", "none"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    scenes = synthetic.make_scenes(args.batch_size, seed=0)
    dataset = synthetic.SyntheticDataset(scenes)
    batch = CaptionCollator(248)([dataset[i] for i in range(args.batch_size)])  # data loading is not timed
    with tempfile.TemporaryDirectory() as output:
        config = TrainConfig(
            batch_size=args.batch_size, num_workers=0, output_dir=output, progress=False, export=[], lr=1e-5,
            max_steps=args.steps + args.warmup, warmup_steps=1, precision=args.precision, pcm=args.pcm,
            pcm_components=8, gradient_checkpointing=args.gradient_checkpointing,
        )
        trainer = Trainer(config, synthetic.tiny_clip(width=args.width, layers=args.layers), dataset)
        for _ in range(args.warmup):
            trainer.train_step(batch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(batch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if trainer.device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB GPU (allocated)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS (process peak)"
    mean_tokens = (batch["long_ids"] != 0).sum(dim=1).float().mean().item()
    print(f"device {trainer.device}, precision {args.precision}, batch {args.batch_size}, width {args.width}, "
          f"layers {args.layers}, long captions {mean_tokens:.0f} tokens on average")
    print(f"{args.steps * args.batch_size / seconds:.1f} samples/s ({seconds / args.steps * 1000:.0f} ms/step), peak {peak}")


if __name__ == "__main__":
    main()
