"""The ``longclip`` command line: generate, convert, stretch, tokens (+ train/eval, demo).

Errors exit with status 2 and one line on stderr naming what went wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_LONG_CLIP = "BeichenZhang/LongCLIP-L"
FORMATS = ("diffusers", "comfy", "openai")


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _device_and_dtype(device: str | None):
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, torch.float16 if device.startswith("cuda") else torch.float32


def generate(args: argparse.Namespace) -> None:
    """Text to image with a Long-CLIP pipeline (SD 1.x, or SDXL with ``--sdxl``)."""
    import torch

    from .pipelines import LongCLIPStableDiffusionPipeline

    device, dtype = _device_and_dtype(args.device)
    if args.sdxl:
        from .pipelines import LongCLIPStableDiffusionXLPipeline as pipeline_class

        base = args.base or DEFAULT_SDXL
    else:
        pipeline_class, base = LongCLIPStableDiffusionPipeline, args.base or DEFAULT_SD15
    long_clip = None if args.long_clip == "none" else args.long_clip
    pipeline = pipeline_class.from_pretrained(base, long_clip=long_clip, dtype=dtype)
    if hasattr(pipeline, "safety_checker") and args.no_safety_checker:
        pipeline.safety_checker = None
    pipeline = pipeline.to(device)

    image = pipeline(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        height=args.height,
        width=args.width,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
    ).images[0]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save(output)
    print(f"Saved {output} ({image.width}×{image.height}, seed {args.seed}).")


def convert(args: argparse.Namespace) -> None:
    """Convert a Long-CLIP checkpoint between formats."""
    from .checkpoints import convert as convert_checkpoint

    destination = convert_checkpoint(args.source, args.destination, to=args.to)
    print(f"Wrote {destination}.")


def stretch(args: argparse.Namespace) -> None:
    """Stretch any CLIP text encoder with KPS (training-free) and save it."""
    from .checkpoints import load_text_encoder, save_comfy_file, save_diffusers
    from .positions import stretch_text_encoder

    text_encoder = load_text_encoder(args.source, with_projection=args.with_projection, subfolder=args.subfolder)
    before = text_encoder.config.max_position_embeddings
    stretch_text_encoder(text_encoder, keep=args.keep, ratio=args.ratio)
    to = args.to or ("comfy" if args.destination.endswith(".safetensors") else "diffusers")
    if to == "comfy":
        save_comfy_file(text_encoder, args.destination)
    elif to == "diffusers":
        save_diffusers(text_encoder, args.destination)
    else:
        raise CommandError(f"`stretch` writes diffusers or comfy files, not {to!r}.")
    after = text_encoder.config.max_position_embeddings
    print(f"Stretched {before} → {after} positions (keep {args.keep}, ratio {args.ratio}); wrote {args.destination}.")


def tokens(args: argparse.Namespace) -> None:
    """Count a prompt's tokens and show what a 77-token CLIP would drop."""
    from .prompts import count_tokens

    prompt = args.prompt if args.prompt != "-" else sys.stdin.read()
    count = count_tokens(prompt, limit=args.limit)
    long_count = count_tokens(prompt, limit=248)
    print(f"{count.num_tokens} tokens (a {args.limit}-token CLIP reads {args.limit - 2}, Long-CLIP reads 246).")
    if count.fits:
        print(f"Everything fits in {args.limit} tokens.")
    else:
        print(f"A {args.limit}-token CLIP drops: {count.dropped_text}")
    if not long_count.fits:
        print(f"Long-CLIP drops: {long_count.dropped_text}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longclip", description="Long-CLIP for Stable Diffusion and SDXL.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command = commands.add_parser("generate", help="text to image with a Long-CLIP pipeline", description=generate.__doc__)
    command.add_argument("prompt", help="the prompt (up to 248 tokens; A1111 weighting syntax)")
    command.add_argument("-n", "--negative-prompt", default=None)
    command.add_argument("-o", "--output", default="longclip.png", help="image file to write (default: %(default)s)")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--steps", type=int, default=30)
    command.add_argument("--guidance-scale", type=float, default=7.5)
    command.add_argument("--height", type=int, default=None, help="default: the model's native size")
    command.add_argument("--width", type=int, default=None)
    command.add_argument("--sdxl", action="store_true", help="use SDXL (default base: %s)" % DEFAULT_SDXL)
    command.add_argument("--base", default=None, help=f"diffusers folder or Hub id (default: {DEFAULT_SD15})")
    command.add_argument(
        "--long-clip",
        default=DEFAULT_LONG_CLIP,
        help="Long-CLIP checkpoint (file, folder or Hub id), 'stretch' (KPS of the base's encoder) or 'none' "
        "(the base folder already holds a long encoder); default: %(default)s",
    )
    command.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    command.add_argument("--no-safety-checker", action="store_true")
    command.set_defaults(handler=generate)

    command = commands.add_parser("convert", help="convert a checkpoint between formats", description=convert.__doc__)
    command.add_argument("source", help="Long-CLIP .pt/.safetensors, transformers folder, ComfyUI file or Hub id")
    command.add_argument("destination", help=".safetensors → ComfyUI file, .pt → reference format, else a folder")
    command.add_argument("--to", choices=FORMATS, default=None, help="override the format chosen from destination")
    command.set_defaults(handler=convert)

    command = commands.add_parser("stretch", help="KPS-stretch any CLIP text encoder", description=stretch.__doc__)
    command.add_argument("source", help="CLIP text encoder: file, folder (e.g. an SD/SDXL base) or Hub id")
    command.add_argument("destination", help=".safetensors → ComfyUI file, else a diffusers folder")
    command.add_argument("--subfolder", default=None, help="e.g. text_encoder_2 for SDXL's bigG")
    command.add_argument("--with-projection", action="store_true", help="keep the text projection (bigG, retrieval)")
    command.add_argument("--keep", type=int, default=20)
    command.add_argument("--ratio", type=int, default=4)
    command.add_argument("--to", choices=("diffusers", "comfy"), default=None)
    command.set_defaults(handler=stretch)

    command = commands.add_parser("tokens", help="count a prompt's tokens", description=tokens.__doc__)
    command.add_argument("prompt", help="the prompt, or - to read standard input")
    command.add_argument("--limit", type=int, default=77, help="the short encoder's length (default: %(default)s)")
    command.set_defaults(handler=tokens)

    _add_area_commands(commands)
    return parser


def _add_area_commands(commands: argparse._SubParsersAction) -> None:
    """Sub-commands owned by other areas (training, demo), registered only when their modules import."""
    from .training.cli import add_commands as add_training_commands

    add_training_commands(commands)
    try:
        from .demo.app import add_commands as add_demo_commands
    except ImportError as error:  # gradio is the optional `demo` extra
        missing = error.name

        def demo_unavailable(_: argparse.Namespace) -> None:
            raise CommandError(f"`longclip demo` needs {missing}: pip install 'longclip-diffusion[demo]'.")

        commands.add_parser("demo", help="Gradio demo (needs the demo extra)").set_defaults(handler=demo_unavailable)
    else:
        add_demo_commands(commands)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoints import CheckpointError

    try:
        args.handler(args)
    except (CommandError, CheckpointError, FileNotFoundError) as error:
        print(f"longclip {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"longclip {args.command}: error: {first_line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
