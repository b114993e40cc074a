"""``longclip train`` and ``longclip eval``: registered on the core ``longclip`` command by ``add_commands``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

from .config import TrainConfig, config_fields, load_config

_HELP = {
    "base_model": "CLIP to start from: OpenAI/Long-CLIP .pt/.safetensors (both towers) or a transformers CLIP folder",
    "stretch": "kps (Long-CLIP), interpolate (ablation baseline) or none",
    "train_data": "ShareGPT4V JSON, JSONL/CSV (image, long_caption[, short_caption]) or .tar shards",
    "pcm": "principal-component matching over the per-process batch (local, the reference), the gathered batch "
    "(global) or not at all (none)",
    "skip_first": "drop the first N samples (the reference holds out ShareGPT4V's first 1000 for evaluation)",
    "resume": "a checkpoint file, or 'auto' for output_dir/checkpoint-latest.pt when it exists",
    "export": "formats written to output_dir/export: openai diffusers transformers comfy",
    "precision": "fp32, bf16 (GPU or CPU) or fp16 (GPU, with loss scaling)",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`TrainConfig` field; unset flags leave the config file's value alone."""
    hints = typing.get_type_hints(TrainConfig)
    for field in config_fields():
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        help_text = _HELP.get(field.name, "") + f" (default: {_default(field)})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind == list[str]:
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            parser.add_argument(flag, type=base, default=None, help=help_text)


def _default(field: dataclasses.Field) -> object:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def train_command(args: argparse.Namespace) -> None:
    """Fine-tune a CLIP into Long-CLIP (run under torchrun / accelerate launch for several GPUs or nodes)."""
    from .trainer import run_training

    overrides = {field.name: getattr(args, field.name) for field in config_fields()}
    written = run_training(load_config(args.config, **overrides))
    for name, path in written.items():
        print(f"{name}: {path}")


def eval_command(args: argparse.Namespace) -> None:
    """Retrieval R@1/5/10 on long and short captions, or zero-shot classification with --classes."""
    import torch

    from .. import checkpoints
    from .data import load_dataset
    from .evaluate import evaluate_retrieval, zero_shot_classification

    model = checkpoints.load_clip_model(args.model)
    if torch.cuda.is_available():
        model = model.to("cuda")
    dataset = load_dataset(args.data, model.config.vision_config.image_size, args.data_format, args.image_root)
    if args.classes:
        classes = [line.strip() for line in Path(args.classes).read_text(encoding="utf-8").splitlines() if line.strip()]
        labels = [record.label for record in dataset.records]
        if not all(labels):
            raise ValueError(f"{args.data[0]}: zero-shot classification needs a 'label' on every sample")
        results = zero_shot_classification(model, dataset, labels, classes, args.template, args.batch_size)
    else:
        results = evaluate_retrieval(model, dataset, args.batch_size, args.num_workers)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to the ``longclip`` command."""
    train = subparsers.add_parser(
        "train", help="fine-tune CLIP into Long-CLIP (KPS + PCM)", description=train_command.__doc__
    )
    train.add_argument("--config", help="YAML or TOML file with any of the options below; flags override it")
    _add_config_flags(train)
    train.set_defaults(handler=train_command)

    evaluate = subparsers.add_parser("eval", help="evaluate retrieval / zero-shot classification", description=eval_command.__doc__)
    evaluate.add_argument("model", help="OpenAI/Long-CLIP file (both towers) or a transformers CLIP folder")
    evaluate.add_argument("--data", nargs="+", required=True, help="JSON (ShareGPT4V-1k/Urban-1k style), JSONL, CSV or .tar")
    evaluate.add_argument("--data-format", default="auto")
    evaluate.add_argument("--image-root", default="", help="folder image paths are relative to (default: the data file's)")
    evaluate.add_argument("--classes", help="text file with one class name a line: zero-shot classification")
    evaluate.add_argument("--template", nargs="+", default=["a photo of a {}."], help="prompt templates for --classes")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--num-workers", type=int, default=0)
    evaluate.add_argument("--output", help="also write the results as JSON here")
    evaluate.set_defaults(handler=eval_command)
