"""The ``longclip`` command line: generate, convert, stretch, tokens (+ train/eval, demo).

Building the parser and ``tokens`` import no torch, transformers or diffusers: each command imports what it uses.
Every error — a bad argument, a missing file, an unreachable Hub, a failed generation — exits with status 2 and one
line on stderr naming the argument, what is wrong and what to do.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .defaults import (
    CLIP_TOKEN_LIMIT,
    DEFAULT_BASE,
    DEFAULT_LONG_CLIP,
    FAMILIES,
    FAMILY_LABELS,
    LONG_CLIP_TOKEN_LIMIT,
    PIPELINE_CLASS_NAMES,
    SPECIAL_TOKENS_PER_PROMPT,
    content_tokens,
)

if TYPE_CHECKING:
    import torch

FORMATS = ("diffusers", "comfy", "openai")
_PACKAGE_DIR = Path(__file__).resolve().parent


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (``None``, an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action)


# --------------------------------------------------------------------------------------------------------------------
# Argument types: refused at parse time, before anything is loaded


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, "a whole number ≥ 1")


def non_negative_int(text: str) -> int:
    return _integer(text, 0, "a whole number ≥ 0")


def seed(text: str) -> int:
    value = _integer(text, 0, "a seed between 0 and 2**64 - 1")
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"expected a seed between 0 and 2**64 - 1, got {value}")
    return value


def image_size(text: str) -> int:
    value = _integer(text, 8, "a size in pixels, a positive multiple of 8")
    if value % 8:
        raise argparse.ArgumentTypeError(f"expected a size in pixels, a positive multiple of 8, got {value}")
    return value


def guidance_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}") from None
    if not 0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0 (1 or less turns guidance off), got {text}")
    return value


def token_limit(text: str) -> int:
    minimum = SPECIAL_TOKENS_PER_PROMPT + 1
    return _integer(text, minimum, f"a token limit ≥ {minimum} (start and end tokens count)")


def stretch_ratio(text: str) -> int:
    return _integer(text, 2, "a whole number ≥ 2 (each position above --keep becomes RATIO positions)")


# --------------------------------------------------------------------------------------------------------------------
# Commands


def _check_image_output(output: str) -> tuple[Path, str]:
    """The output path and the PIL format its extension names; refused before any model is loaded."""
    from PIL import Image

    path = Path(output).expanduser()
    extension = path.suffix.lower()
    Image.init()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None or image_format not in Image.SAVE:
        writable = sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)
        common = [ext for ext in (".png", ".jpg", ".webp") if ext in writable]
        raise CommandError(
            f"-o/--output {output}: {'no' if not extension else 'unknown'} image extension"
            f"{'' if not extension else ' ' + repr(extension)}; use one such as {', '.join(common)}."
        )
    if path.is_dir():
        raise CommandError(f"-o/--output {output} is a folder; give an image file name such as {path / 'image.png'}.")
    return path, image_format


def _index_folder(base: Path | str) -> Path | None:
    """The folder holding ``base``'s ``model_index.json``: ``base`` itself, or for a Hub id the cached snapshot (the
    file is fetched if needed — a few hundred bytes ``from_pretrained`` reads first anyway)."""
    if isinstance(base, Path):
        return base
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(base, "model_index.json")).parent
    except (OSError, ValueError, EntryNotFoundError):
        return None  # not a pipeline repo, gated, or not cached offline: the loader reports it


def _pick_family(args: argparse.Namespace, base: Path | str | None) -> str:
    """The family to run: the one the base's ``model_index.json`` names, checked against ``--family``."""
    from .sources import detect_family

    asked = args.family or ("sdxl" if args.sdxl else None)
    folder = _index_folder(base) if base is not None else None
    detected = detect_family(folder) if folder is not None else None
    if asked and args.sdxl and args.family not in (None, "sdxl"):
        raise CommandError(f"--sdxl and --family {args.family} disagree; give one of them.")
    if detected and asked and detected != asked:
        raise CommandError(
            f"--base {args.base} is a model of the {FAMILY_LABELS[detected]} family (model_index.json), but "
            f"{'--sdxl' if args.sdxl else '--family ' + asked} asks for {FAMILY_LABELS[asked]}; "
            f"use --family {detected} (or leave it out)."
        )
    return asked or detected or "sd15"


def _pipeline_class(family: str):
    from transformers.utils import logging as transformers_logging

    # Import-time notices ("`CLIPImageProcessor` requires torchvision (not installed)…") are nothing a user acts on.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        from . import pipelines
    finally:
        transformers_logging.set_verbosity(verbosity)
    pipeline_class = getattr(pipelines, PIPELINE_CLASS_NAMES[family], None)
    if pipeline_class is None:
        supported = [name for name, class_name in PIPELINE_CLASS_NAMES.items() if hasattr(pipelines, class_name)]
        raise CommandError(
            f"--family {family}: {FAMILY_LABELS[family]} is not supported yet by this version; "
            f"supported: {', '.join(supported)}."
        )
    return pipeline_class


def _check_device(device: str | None) -> tuple[str, torch.dtype]:
    """``--device`` checked (a torch device that exists here), or the default; and its dtype."""
    import torch

    from .defaults import pick_device_and_dtype

    if device is not None:
        try:
            kind = torch.device(device).type
        except (RuntimeError, ValueError):
            raise CommandError(f"--device {device}: not a torch device; use cpu, cuda, cuda:1 or mps.") from None
        available = {
            "cuda": torch.cuda.is_available(),
            "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        }
        if not available.get(kind, True):
            raise CommandError(f"--device {device}: no {kind} device is available here; use --device cpu.")
    return pick_device_and_dtype(device)


def _fill_size(pipeline, height: int | None, width: int | None) -> tuple[int | None, int | None]:
    """Only one side given: the other stays at the model's native size (diffusers' SD pipelines would ignore both)."""
    if (height is None) == (width is None):
        return height, width
    sample_size = getattr(pipeline, "default_sample_size", None) or pipeline.unet.config.sample_size
    native_height, native_width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
    return height or native_height * pipeline.vae_scale_factor, width or native_width * pipeline.vae_scale_factor


def generate(args: argparse.Namespace) -> None:
    """Text to image with a Long-CLIP pipeline (SD 1.x, SDXL, SD3 or Flux, read from the base's model_index.json)."""
    from .sources import resolve_source

    output, image_format = _check_image_output(args.output)
    base = resolve_source(args.base, "--base") if args.base else None
    family = _pick_family(args, base)
    base = base or resolve_source(DEFAULT_BASE[family], "--base (default)")
    long_clip = args.long_clip
    if long_clip not in ("stretch", "none"):
        long_clip = str(resolve_source(long_clip, "--long-clip"))
    device, dtype = _check_device(args.device)
    pipeline_class = _pipeline_class(family)

    import numpy as np
    import torch

    from .files import atomic_file

    pipeline = pipeline_class.from_pretrained(
        str(base), long_clip=None if long_clip == "none" else long_clip, dtype=dtype
    )
    if hasattr(pipeline, "safety_checker") and args.no_safety_checker:
        pipeline.safety_checker = None
    pipeline = pipeline.to(device)
    height, width = _fill_size(pipeline, args.height, args.width)
    pixels = pipeline(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        height=height,
        width=width,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
        output_type="np",
    ).images
    if not np.isfinite(pixels).all():
        raise CommandError(
            "the generated image contains NaN/Inf values (numerical overflow, e.g. an extreme prompt weight or "
            "float16 on this device); nothing was saved. Try other weights, or --device cpu (float32)."
        )
    image = pipeline.numpy_to_pil(pixels)[0]
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(output) as partial:
        image.save(partial, format=image_format)
    print(f"Saved {output} ({image.width}×{image.height}, {FAMILY_LABELS[family]}, seed {args.seed}).")


def convert(args: argparse.Namespace) -> None:
    """Convert a Long-CLIP checkpoint between formats."""
    from .sources import resolve_source

    source = resolve_source(args.source, "source")
    from .checkpoints import convert as convert_checkpoint

    destination = convert_checkpoint(source, args.destination, to=args.to, overwrite=args.overwrite)
    print(f"Wrote {destination}.")


def _source_pad_token_id(source: Path | str, subfolder: str | None) -> int:
    """The pad id of the tokenizer beside the stretched encoder (SD's pads with end-of-text, SDXL's ``tokenizer_2``
    with "!"), so stock diffusers reads the stretched folder as the base model read its encoder; else end-of-text."""
    from .tokenizer import END_OF_TEXT

    if not isinstance(source, Path) or not source.is_dir():
        return END_OF_TEXT
    tokenizer_folder = source / (subfolder or "text_encoder").replace("text_encoder", "tokenizer")
    if not (tokenizer_folder / "tokenizer_config.json").is_file():
        return END_OF_TEXT
    from transformers import CLIPTokenizer

    pad_token_id = CLIPTokenizer.from_pretrained(tokenizer_folder).pad_token_id
    return END_OF_TEXT if pad_token_id is None else pad_token_id


def stretch(args: argparse.Namespace) -> None:
    """Stretch any CLIP text encoder with KPS (training-free) and save it."""
    from .sources import resolve_source

    source = resolve_source(args.source, "source")
    to = args.to or ("comfy" if args.destination.lower().endswith(".safetensors") else "diffusers")
    from .checkpoints import _check_diffusers_destination, load_text_encoder, save_comfy_file, save_diffusers
    from .files import check_destination
    from .positions import stretch_text_encoder

    # The writer's own destination rule, applied before loading (the writer checks again when it writes).
    if to == "comfy":
        check_destination(args.destination, args.overwrite)
    else:
        _check_diffusers_destination(Path(args.destination), args.overwrite)

    text_encoder = load_text_encoder(source, with_projection=args.with_projection, subfolder=args.subfolder)
    before = text_encoder.config.max_position_embeddings
    try:
        stretch_text_encoder(text_encoder, keep=args.keep, ratio=args.ratio)
    except ValueError as error:  # the library names its parameters; say the flags as typed
        raise CommandError(str(error).replace("`keep`", "--keep").replace("`ratio`", "--ratio")) from None
    if to == "comfy":
        save_comfy_file(text_encoder, args.destination, overwrite=args.overwrite)
    else:
        pad_token_id = _source_pad_token_id(source, args.subfolder)
        save_diffusers(text_encoder, args.destination, overwrite=args.overwrite, pad_token_id=pad_token_id)
    after = text_encoder.config.max_position_embeddings
    print(f"Stretched {before} → {after} positions (keep {args.keep}, ratio {args.ratio}); wrote {args.destination}.")


def tokens(args: argparse.Namespace) -> None:
    """Count a prompt's tokens and show what a 77-token CLIP (and Long-CLIP) would drop."""
    prompt = args.prompt if args.prompt != "-" else sys.stdin.read()
    if not prompt.strip():
        source = "standard input is" if args.prompt == "-" else "the prompt is"
        raise CommandError(f"{source} empty; give some text (or - to read it from standard input).")
    from .prompt_syntax import count_tokens

    count = count_tokens(prompt, limit=args.limit)
    long_count = count_tokens(prompt, limit=LONG_CLIP_TOKEN_LIMIT)
    print(
        f"{count.num_tokens} tokens (a {args.limit}-token CLIP reads {content_tokens(args.limit)}, "
        f"Long-CLIP reads {content_tokens(LONG_CLIP_TOKEN_LIMIT)})."
    )
    if count.fits:
        print(f"Everything fits in {args.limit} tokens.")
    else:
        print(f"A {args.limit}-token CLIP drops: {count.dropped_text}")
    if not long_count.fits:
        print(f"Long-CLIP drops: {long_count.dropped_text}")


# --------------------------------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="longclip", description="Long-CLIP for Stable Diffusion and SDXL.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    defaults = _HelpFormatter

    command = commands.add_parser(
        "generate", help="text to image with a Long-CLIP pipeline", description=generate.__doc__, formatter_class=defaults
    )
    command.add_argument("prompt", help="the prompt (up to 248 tokens; A1111 weighting syntax)")
    command.add_argument("-n", "--negative-prompt", help="what the image should not show")
    command.add_argument("-o", "--output", default="longclip.png", help="image file to write (.png, .jpg, .webp, …)")
    command.add_argument("--seed", type=seed, default=0, help="random seed; the same seed gives the same image")
    command.add_argument("--steps", type=positive_int, default=30, help="denoising steps")
    command.add_argument("--guidance-scale", type=guidance_scale, default=7.5, help="classifier-free guidance")
    command.add_argument(
        "--height", type=image_size,
        help="image height, a multiple of 8 (default: the model's native size, e.g. 512 for SD 1.5, 1024 for SDXL; "
        "given alone, the width stays native)",
    )
    command.add_argument(
        "--width", type=image_size,
        help="image width, a multiple of 8 (default: native; given alone, the height stays native)",
    )
    command.add_argument(
        "--family", choices=FAMILIES,
        help="model family (default: read from a local --base folder's model_index.json, else sd15)",
    )
    command.add_argument("--sdxl", action="store_true", help="same as --family sdxl")
    command.add_argument(
        "--base",
        help="diffusers folder or Hub id (default: " + ", ".join(f"{f}: {DEFAULT_BASE[f]}" for f in ("sd15", "sdxl")) + ")",
    )
    command.add_argument(
        "--long-clip",
        default=DEFAULT_LONG_CLIP,
        help="Long-CLIP checkpoint (file, folder or Hub id), 'stretch' (KPS of the base's encoder) or 'none' "
        "(the base folder already holds a long encoder)",
    )
    command.add_argument(
        "--device", help="torch device (default: cuda, else mps, else cpu; float16 on "
        "cuda/mps, float32 on cpu)"
    )
    command.add_argument("--no-safety-checker", action="store_true", help="SD 1.x: turn off the safety checker")
    command.set_defaults(handler=generate)

    command = commands.add_parser("convert", help="convert a checkpoint between formats", description=convert.__doc__)
    command.add_argument("source", help="Long-CLIP .pt/.safetensors, transformers folder, ComfyUI file or Hub id")
    command.add_argument("destination", help=".safetensors → ComfyUI file, .pt → reference format, else a folder")
    command.add_argument("--to", choices=FORMATS, help="override the format chosen from the destination's name")
    command.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    command.set_defaults(handler=convert)

    command = commands.add_parser(
        "stretch", help="KPS-stretch any CLIP text encoder", description=stretch.__doc__, formatter_class=defaults
    )
    command.add_argument("source", help="CLIP text encoder: file, folder (e.g. an SD/SDXL base) or Hub id")
    command.add_argument("destination", help=".safetensors → ComfyUI file, else a diffusers folder")
    command.add_argument("--subfolder", help="e.g. text_encoder_2 for SDXL's bigG")
    command.add_argument("--with-projection", action="store_true", help="keep the text projection (bigG, retrieval)")
    command.add_argument("--keep", type=non_negative_int, default=20, help="positions kept as they are")
    command.add_argument("--ratio", type=stretch_ratio, default=4, help="each later position becomes RATIO positions")
    command.add_argument(
        "--to", choices=("diffusers", "comfy"), help="override the format chosen from the destination's name"
    )
    command.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    command.set_defaults(handler=stretch)

    command = commands.add_parser(
        "tokens", help="count a prompt's tokens", description=tokens.__doc__, formatter_class=defaults
    )
    command.add_argument("prompt", help="the prompt, or - to read standard input")
    command.add_argument("--limit", type=token_limit, default=CLIP_TOKEN_LIMIT, help="the short encoder's length")
    command.set_defaults(handler=tokens)

    _add_area_commands(commands)
    return parser


def _add_area_commands(commands: argparse._SubParsersAction) -> None:
    """Sub-commands owned by other areas (training, demo); their registration imports nothing heavy."""
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


# --------------------------------------------------------------------------------------------------------------------
# Errors: recognised by type without importing model code


def _raised_by_us(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE_DIR)


def user_error_message(error: BaseException) -> str | None:
    """The one line to show for an error the user can fix, or ``None`` for a bug (which keeps its traceback).

    User errors: ``CommandError``, the project's own error types (``CheckpointError``, ``HubUnavailableError``,
    ``DestinationExistsError`` …), ``ValueError``/``OSError`` (missing files, permissions, a full disk), a
    ``TypeError`` raised by project code, and the Hub client's errors (``huggingface_hub.errors``, httpx).
    """
    module = type(error).__module__
    ours = module.split(".")[0] == __package__.split(".")[0]
    hub = module.startswith(("huggingface_hub", "httpx", "requests"))
    if not (
        isinstance(error, (CommandError, ValueError, OSError))
        or ours
        or hub
        or (isinstance(error, TypeError) and _raised_by_us(error))
    ):
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help (0) or a usage error already printed as one line (2)
        return exit_request.code if isinstance(exit_request.code, int) else 2
    try:
        args.handler(args)
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        print(f"longclip {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
