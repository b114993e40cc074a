"""``longclip train`` and ``longclip eval``: registered on the core ``longclip`` command by ``add_commands``.

Building the parser imports nothing heavy (no torch, no transformers): those load inside the command functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing

from .config import (
    ACTIVATIONS,
    DATA_FORMATS,
    EXPORT_FORMATS,
    PARALLEL_MODES,
    PCM_MODES,
    PRECISIONS,
    STRETCH_METHODS,
    TrainConfig,
    config_fields,
    flag_name,
    load_config,
)

_HELP = {
    "base_model": "CLIP to start from: OpenAI/Long-CLIP .pt/.safetensors (both towers) or a transformers CLIP folder "
    "(required)",
    "stretch": "position stretch: kps (Long-CLIP), interpolate (ablation baseline) or none (keep the length)",
    "keep": "position rows kept (and frozen) as they are",
    "ratio": "stretch ratio of the other rows",
    "logit_scale_init": "logit scale the run starts from (ln 100)",
    "hidden_act": "activation of an OpenAI/OpenCLIP-layout --base-model file, which does not record it: auto = gelu "
    "for a text tower deeper than 12 layers (OpenCLIP ViT-H/g/bigG), quick_gelu otherwise (OpenAI CLIP); folders "
    "carry their own",
    "text_only": "train the text tower only, against image features the frozen vision tower computes once and caches "
    "(the tower SD/SDXL use; needs far less memory)",
    "feature_cache": "folder of the image-feature cache for --text-only (default: OUTPUT_DIR/feature-cache); one "
    "sub-folder per model, preprocessing and data, reused when they match",
    "train_data": "ShareGPT4V JSON, JSONL/CSV (image, long_caption[, short_caption]) or .tar shards (required)",
    "data_format": "auto: from the extension",
    "image_root": "folder image paths are relative to (default: each data file's folder)",
    "skip_first": "drop the first N samples (the reference holds out ShareGPT4V's first 1000 for evaluation)",
    "num_workers": "data-loading worker processes",
    "max_bad_fraction": "stop when more than this share of the samples cannot be used (skipped rows, unreadable "
    "images); fewer are skipped, logged and summarised",
    "short_loss": "also train short captions against PCM image features",
    "pcm": "principal-component matching over the per-process batch (local, the reference), the gathered batch "
    "(global) or not at all (none)",
    "pcm_components": "principal components PCM keeps",
    "label_smoothing": "label smoothing of both contrastive losses",
    "batch_size": "samples per process and step",
    "epochs": "passes over the data (unless --max-steps is set)",
    "max_steps": "optimizer steps in all (0: --epochs decides)",
    "lr": "peak learning rate of AdamW",
    "weight_decay": "AdamW weight decay",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "warmup_steps": "linear warm-up steps before the cosine decay",
    "precision": "bf16 runs on GPU or CPU, fp16 on GPU only (with loss scaling)",
    "gradient_checkpointing": "recompute activations in the backward pass to save memory",
    "parallel": "with several processes: ddp (each holds the whole model) or fsdp (weights, gradients and optimizer "
    "state sharded over the processes; bf16 mixed precision with --precision bf16)",
    "seed": "seed of the data order and initialisation",
    "output_dir": "run folder: config, metrics, checkpoints, export",
    "save_every": "write a checkpoint every N steps (0: only at the end)",
    "log_every": "log metrics every N steps",
    "resume": "a checkpoint file, or 'auto': output_dir/checkpoint-latest.pt, falling back to checkpoint-previous.pt "
    "when the latest cannot be read, starting afresh when there is none",
    "export": "formats written to output_dir/export: openai, diffusers, transformers, comfy (CLIP-L-style text "
    "encoder), sdxl (text_encoder_2/ + tokenizer_2/ for a bigG), comfy_g (ComfyUI clip_g file with projection)",
    "progress": "show a progress bar",
}
_CHOICES = {
    "stretch": STRETCH_METHODS, "pcm": PCM_MODES, "precision": PRECISIONS, "data_format": DATA_FORMATS,
    "export": EXPORT_FORMATS, "parallel": PARALLEL_MODES, "hidden_act": ACTIVATIONS,
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`TrainConfig` field; unset flags leave the config file's value alone."""
    hints = typing.get_type_hints(TrainConfig)
    for field in config_fields():
        kind = hints[field.name]
        help_text = _HELP[field.name] + _default_note(field)
        if kind is bool:
            parser.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind == list[str]:
            parser.add_argument(
                flag_name(field.name), nargs="+", default=None, choices=_CHOICES.get(field.name),
                metavar=field.name.upper().removesuffix("S"), help=help_text,
            )
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            parser.add_argument(
                flag_name(field.name), type=base, default=None, choices=_CHOICES.get(field.name), help=help_text
            )


def _default_note(field: dataclasses.Field) -> str:
    """`` (default: …)`` for a field with a meaningful default; nothing for empty ones."""
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if default in (None, "", []):
        return ""
    if isinstance(default, list):
        default = " ".join(default)
    elif isinstance(default, bool):
        default = "yes" if default else "no"
    elif isinstance(default, float):
        default = f"{default:.6g}"
    return f" (default: {default})"


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which may be swapped after the handler is made)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _show_messages() -> None:
    """Print the training modules' log messages (resume step, skipped samples, summary) on stderr, rank 0 only."""
    training_logger = logging.getLogger(__package__)
    if not any(isinstance(handler, _StderrHandler) for handler in training_logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        training_logger.addHandler(handler)
    training_logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.ERROR)


def train_command(args: argparse.Namespace) -> None:
    """Fine-tune a CLIP into Long-CLIP (run under torchrun / accelerate launch for several GPUs or nodes)."""
    from .trainer import run_training

    config = load_config(args.config, check_inputs=True, **{field.name: getattr(args, field.name) for field in config_fields()})
    _show_messages()
    written = run_training(config)
    for name, path in written.items():
        print(f"{name}: {path}")


def eval_command(args: argparse.Namespace) -> None:
    """Retrieval R@1/5/10 on long and short captions, or zero-shot classification with --classes."""
    import json
    from pathlib import Path

    import torch

    from .. import checkpoints
    from ..files import atomic_file
    from .data import load_dataset
    from .evaluate import evaluate_retrieval, zero_shot_classification

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be 0 or more, got {args.num_workers}")
    classes = []
    if args.classes:
        if not Path(args.classes).is_file():
            raise FileNotFoundError(f"--classes file {args.classes} does not exist")
        classes = [line.strip() for line in Path(args.classes).read_text(encoding="utf-8").splitlines() if line.strip()]
        if not classes:
            raise ValueError(f"--classes file {args.classes} holds no class names (one a line)")
        for template in args.template:
            try:
                filled = template.format("x")
            except (IndexError, KeyError, ValueError):
                filled = template
            if "{}" not in template or filled == template:
                raise ValueError(f"--template {template!r}: put {{}} where the class name goes, e.g. 'a photo of a {{}}.'")
    _show_messages()
    dataset = load_dataset(args.data, 0, args.data_format, args.image_root)  # every sample must be usable
    model = checkpoints.load_clip_model(args.model)
    dataset.image_size = model.config.vision_config.image_size
    if torch.cuda.is_available():
        model = model.to("cuda")
    if classes:
        labels = [record.label for record in dataset.records]
        unlabelled = next((record for record in dataset.records if not record.label), None)
        if unlabelled is not None:
            raise ValueError(f"{unlabelled.where}: zero-shot classification (--classes) needs a 'label' on every sample")
        results = zero_shot_classification(model, dataset, labels, classes, args.template, args.batch_size)
    else:
        results = evaluate_retrieval(model, dataset, args.batch_size, args.num_workers)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        with atomic_file(args.output) as temporary:
            temporary.write_text(text + "\n", encoding="utf-8")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``eval`` to the ``longclip`` command."""
    train = subparsers.add_parser(
        "train", help="fine-tune CLIP into Long-CLIP (KPS + PCM)", description=train_command.__doc__
    )
    train.add_argument("--config", help="YAML or TOML file with any of the options below (keys without the dashes); "
                       "flags override it")
    _add_config_flags(train)
    train.set_defaults(handler=train_command)

    evaluate = subparsers.add_parser("eval", help="evaluate retrieval / zero-shot classification", description=eval_command.__doc__)
    evaluate.add_argument("model", help="OpenAI/Long-CLIP file (both towers) or a transformers CLIP folder")
    evaluate.add_argument("--data", nargs="+", required=True, help="JSON (ShareGPT4V-1k/Urban-1k style), JSONL, CSV or .tar")
    evaluate.add_argument("--data-format", default="auto", choices=DATA_FORMATS,
                          help="default: from the extension")
    evaluate.add_argument("--image-root", default="", help="folder image paths are relative to (default: the data file's)")
    evaluate.add_argument("--classes", help="text file with one class name a line: zero-shot classification")
    evaluate.add_argument("--template", nargs="+", default=["a photo of a {}."],
                          help="prompt templates for --classes (default: %(default)s)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    evaluate.add_argument("--num-workers", type=int, default=0, help="default: %(default)s")
    evaluate.add_argument("--output", help="also write the results as JSON here")
    evaluate.set_defaults(handler=eval_command)
