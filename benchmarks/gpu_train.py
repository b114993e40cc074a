"""One-call GPU training benchmark: ViT-L/14 + 248-token text, random weights, bf16, batch 256.

    python benchmarks/gpu_train.py --json gpu-train.json       # everything below, ~3-5 minutes on one H100/H200

Reports, on the GPU it finds:
1. the measured bf16 matrix-multiply rate (8192³ ``torch.matmul``, the ceiling the model is compared with);
2. the full Long-CLIP step (both towers, the default DDP code path ``Trainer.train_step`` in one process): samples/s,
   model FLOP/s as a share of (1), peak memory, host syncs in one step — with the trainer's defaults (SDPA attention,
   fused AdamW) and, for comparison, eager attention and activation checkpointing;
3. the text-only step (cached image features, text tower only): per-step time and peak memory.
Long captions are 248 tokens (the whole context), short ones 20. Model FLOPs count matrix multiplies only
(forward × 3 for forward + backward; recomputation by activation checkpointing is not counted as useful work).
Data loading is not timed (a prepared batch on the GPU); whether the loader keeps up depends on the user's images
and CPU (``--num-workers``): time ``longclip eval`` over the data for its decoded-image rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings

import torch

from longclip_diffusion.training.config import TrainConfig
from longclip_diffusion.training.trainer import Trainer

from train_text_only import RandomCaptions, vit_l14_clip  # noqa: E402  (benchmarks/ is the script's folder)

LONG_TOKENS, SHORT_TOKENS = 248, 20


def matmul_rate(size: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matrix-multiply rate in FLOP/s."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def tower_flops(tokens: int, width: int, intermediate: int, layers: int) -> int:
    """Forward matrix-multiply FLOPs of one sample through a transformer tower (q, k, v, out, MLP, attention)."""
    per_layer = 2 * tokens * (4 * width * width + 2 * width * intermediate) + 2 * 2 * tokens * tokens * width
    return layers * per_layer


def step_flops(model, text_only: bool) -> int:
    """Training FLOPs of one sample (forward + backward = 3 × forward)."""
    text, vision = model.config.text_config, model.config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    forward = sum(
        tower_flops(tokens, text.hidden_size, text.intermediate_size, text.num_hidden_layers)
        + 2 * text.hidden_size * model.config.projection_dim
        for tokens in (LONG_TOKENS, SHORT_TOKENS)
    )
    if not text_only:
        forward += tower_flops(patches + 1, vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers)
        forward += 2 * patches * 3 * vision.patch_size**2 * vision.hidden_size  # patch embedding
        forward += 2 * vision.hidden_size * model.config.projection_dim
    return 3 * forward


def host_syncs(trainer: Trainer, batch: dict) -> int:
    """How many times one (non-logging) step makes the host wait for the GPU (``torch.cuda`` sync debug mode)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(warning.message) for warning in caught)


class FixedLengthCaptions(RandomCaptions):
    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        return self.pixels[index], " ".join(["a"] * (LONG_TOKENS - 2)), " ".join(["a"] * (SHORT_TOKENS - 2))


def run(mode: str, batch_size: int, steps: int, warmup: int, attention: str, checkpointing: bool, rate: float) -> dict:
    """One row; a configuration that does not fit the GPU's memory gives a row saying so (batch 256 of the full step
    needs about 99 GiB: an H200, or activation checkpointing on an 80 GB card)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        return measure(mode, batch_size, steps, warmup, attention, checkpointing, rate)
    except torch.OutOfMemoryError:
        row = {"mode": mode, "attention": attention, "gradient_checkpointing": checkpointing, "batch_size": batch_size,
               "error": f"out of GPU memory (peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)"}
        print(json.dumps(row), flush=True)
        return row


def measure(mode: str, batch_size: int, steps: int, warmup: int, attention: str, checkpointing: bool, rate: float) -> dict:
    model = vit_l14_clip()
    model.set_attn_implementation(attention)
    dataset = FixedLengthCaptions(batch_size, 224)
    with tempfile.TemporaryDirectory() as output:
        config = TrainConfig(
            batch_size=batch_size, num_workers=0, output_dir=output, progress=False, export=[], lr=1e-5,
            max_steps=steps + warmup, warmup_steps=1, precision="bf16", gradient_checkpointing=checkpointing,
            text_only=mode == "text-only",
        )
        trainer = Trainer(config, model, dataset)
        batch = trainer.loader.collate_fn([trainer.loader.dataset[i] for i in range(batch_size)])
        batch = {key: value.cuda() if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        for _ in range(warmup):
            trainer.train_step(batch)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batch)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        syncs = host_syncs(trainer, batch)
    flops = step_flops(trainer.model, mode == "text-only") * batch_size / seconds
    row = {
        "mode": mode, "attention": attention, "gradient_checkpointing": checkpointing, "batch_size": batch_size,
        "ms_per_step": round(1000 * seconds, 1), "samples_per_s": round(batch_size / seconds, 1),
        "model_tflops": round(flops / 1e12, 1), "share_of_matmul_rate": round(100 * flops / rate, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1), "host_syncs_per_step": syncs,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_train.py needs a CUDA GPU; use benchmarks/train_text_only.py on a CPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    rate = matmul_rate()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "bf16_matmul_tflops": round(rate / 1e12, 1)}), flush=True)
    rows = [
        run("full", args.batch_size, args.steps, args.warmup, "sdpa", False, rate),
        run("full", args.batch_size, args.steps, args.warmup, "eager", False, rate),
        run("full", args.batch_size, args.steps, args.warmup, "sdpa", True, rate),
        run("text-only", args.batch_size, args.steps, args.warmup, "sdpa", False, rate),
    ]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"device": torch.cuda.get_device_name(), "bf16_matmul_tflops": rate / 1e12, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
