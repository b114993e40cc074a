"""Offline proof that Long-CLIP training works, in a synthetic world of coloured shapes (CPU, no downloads).

1. Pre-train a tiny two-tower CLIP with 77 text positions on short/medium captions (all fit in 77 tokens).
2. Fine-tune it on long captions: KPS + PCM, KPS without PCM, naive interpolation (long captions only), and KPS + PCM
   text-only (vision tower frozen, its features cached once; --variants picks which).
3. Report text↔image R@1 on held-out long and short captions, next to the 77-token model.

    python benchmarks/train_synthetic.py            # full run (about 9 min on 2 CPU cores)
    python benchmarks/train_synthetic.py --quick    # smoke run (under a minute)
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from longclip_diffusion import tokenizer
from longclip_diffusion.training import synthetic
from longclip_diffusion.training.config import TrainConfig
from longclip_diffusion.training.evaluate import evaluate_retrieval
from longclip_diffusion.training.model import merged_model
from longclip_diffusion.training.trainer import Trainer

VARIANTS = {
    "KPS + PCM": dict(stretch="kps", short_loss=True, pcm="local"),
    "KPS, no PCM": dict(stretch="kps", short_loss=True, pcm="none"),
    "interpolation, long only": dict(stretch="interpolate", short_loss=False, pcm="none"),
    "KPS + PCM, text-only": dict(stretch="kps", short_loss=True, pcm="local", text_only=True),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-scenes", type=int, default=4096)
    parser.add_argument("--test-scenes", type=int, default=256)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--finetune-steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pcm-components", type=int, default=8, help="32 in the reference (width 768); 8 for width 64")
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest for this tiny model (no thread sync)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="VARIANT",
                        help=f"fine-tunings to run (default: all): {'; '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.train_scenes, args.test_scenes, args.pretrain_steps, args.finetune_steps = 256, 64, 20, 5
    return args


def describe_world(scenes: list[synthetic.Scene]) -> dict[str, float]:
    """How often the main shape (what tells a group's scenes apart) lies past token 77 of the long caption."""
    lengths, before_main = [], []
    for scene in scenes:
        caption = scene.long_caption()
        lengths.append(len(tokenizer.token_ids([caption])[0]) + 2)
        before_main.append(len(tokenizer.token_ids([caption.split(" the main shape is")[0]])[0]) + 1)
    shorts = [scene.short_caption() for scene in scenes]
    return {
        "mean_long_tokens": sum(lengths) / len(lengths),
        "max_long_tokens": max(lengths),
        "share_main_past_77": 100.0 * sum(b >= 76 for b in before_main) / len(scenes),
        "share_unique_short": 100.0 * sum(shorts.count(s) == 1 for s in shorts) / len(shorts),
    }


def train(model, dataset, args: argparse.Namespace, output: Path, **overrides) -> torch.nn.Module:
    config = TrainConfig(
        batch_size=args.batch_size, num_workers=0, output_dir=str(output), save_every=0, log_every=50,
        progress=False, seed=args.seed, pcm_components=args.pcm_components, export=[], **overrides,
    )
    return merged_model(Trainer(config, model, dataset).train())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    train_scenes = synthetic.make_scenes(args.train_scenes, seed=args.seed)
    test_scenes = synthetic.make_scenes(args.test_scenes, seed=args.seed + 10_000)
    world = describe_world(test_scenes)
    print("test world:", json.dumps({k: round(v, 1) for k, v in world.items()}))
    test = synthetic.SyntheticDataset(test_scenes)
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    with TemporaryDirectory() as scratch:
        tick = time.time()
        base = train(
            synthetic.tiny_clip(seed=args.seed), synthetic.SyntheticDataset(train_scenes, caption="medium", seed=args.seed),
            args, Path(scratch, "pretrain"), stretch="none", keep=0, short_loss=False, lr=args.pretrain_lr,
            max_steps=args.pretrain_steps, warmup_steps=max(1, args.pretrain_steps // 20), logit_scale_init=None,
            weight_decay=0.1,
        )
        timings["pretrain (77 positions)"] = time.time() - tick
        results["CLIP, 77 positions (before fine-tuning)"] = evaluate_retrieval(base, test)
        long_data = synthetic.SyntheticDataset(train_scenes, caption="long")
        for name in args.variants:
            variant = VARIANTS[name]
            tick = time.time()
            model = train(
                copy.deepcopy(base), long_data, args, Path(scratch, name.replace(" ", "_")), lr=args.finetune_lr,
                max_steps=args.finetune_steps, warmup_steps=max(1, args.finetune_steps // 10), **variant,
            )
            timings[name] = time.time() - tick
            results[name] = evaluate_retrieval(model, test)
    print_table(results, world, args, time.time() - start)
    if args.json:
        args.json.write_text(json.dumps({"world": world, "results": results, "timings": timings, "args": vars(args)}, indent=2, default=str))


def print_table(results: dict[str, dict], world: dict[str, float], args: argparse.Namespace, seconds: float) -> None:
    print(f"\n{args.test_scenes} held-out scenes; R@1 in %, image→text / text→image; total {seconds / 60:.1f} min\n")
    print("| model | long R@1 i2t / t2i | long R@5 i2t / t2i | short R@1 i2t / t2i | short R@5 i2t / t2i |")
    print("|---|---|---|---|---|")
    for name, metrics in results.items():
        cells = [
            f"{metrics[kind][f'i2t@{k}']:.1f} / {metrics[kind][f't2i@{k}']:.1f}" for kind in ("long", "short") for k in (1, 5)
        ]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
