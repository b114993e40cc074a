"""The Gradio app: long prompt to image, Long-CLIP and stock CLIP side by side.

Wiring only. ``build_demo(model_loader=...)`` returns a ``gr.Blocks`` (tests inject tiny models
through ``model_loader``); ``launch_demo`` serves it (127.0.0.1 unless asked otherwise);
``add_commands(subparsers)`` adds ``longclip demo`` to the core command line.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from longclip_diffusion import defaults

from .access import NO_FILE, AllowedModels, is_local_only
from .errors import DemoInputError, ModelLoadError, friendly_error
from .examples import EXAMPLES
from .models import (
    NO_NEGATIVE_PROMPT,
    T5_MAX_SEQUENCE_LENGTH,
    EmbeddingCache,
    ModelCache,
    ModelLoader,
    ModelSpec,
    encode,
    load_models,
)
from .tokens import CLIP_LIMIT, LONG_CLIP_LIMIT, cap_prompt, token_counter_html

logger = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
FAMILY_NAMES = defaults.FAMILY_LABELS  # family keys -> the labels the page shows
SD15, SDXL, SD3, FLUX = (FAMILY_NAMES[key] for key in ("sd15", "sdxl", "sd3", "flux"))
FAMILY_KEYS = {name: key for key, name in FAMILY_NAMES.items()}
FAMILIES = tuple(FAMILY_NAMES[key] for key in defaults.FAMILIES)
DEFAULT_BASE = {FAMILY_NAMES[key]: base for key, base in defaults.DEFAULT_BASE.items()}
DEFAULT_SIZE = {SD15: 512, SDXL: 1024, SD3: 1024, FLUX: 1024}
DEFAULT_GUIDANCE = {SD15: 7.5, SDXL: 7.5, SD3: 7.0, FLUX: 3.5}  # Flux: FLUX.1-dev's distilled guidance
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 150
MAX_GUIDANCE = 30.0

CSS = """
#token-counter .token-counter { font-size: 0.95em; line-height: 1.5; }
#token-counter .token-summary { margin-bottom: 0.3em; }
#token-counter .token-count { font-weight: 700; }
#token-counter .cut .token-count, #token-counter .over .token-count { color: #b45309; }
#token-counter .token-text { max-height: 12em; overflow-y: auto; opacity: 0.9; }
#token-counter del.clip-dropped {
  text-decoration: line-through; text-decoration-color: #dc2626; text-decoration-thickness: 2px;
  color: #b91c1c; background: rgba(239, 68, 68, 0.12);
}
#token-counter mark.longclip-dropped { background: #fde68a; color: inherit; }
#status .status { padding: 0.5em 0.75em; border-radius: 6px; }
#status .status.ok { background: rgba(34, 197, 94, 0.12); }
#status .status.error { background: rgba(239, 68, 68, 0.15); color: #991b1b; font-weight: 600; }
#status .status .note, #token-counter .token-note { color: #b45309; font-weight: 600; }
"""


@dataclass
class GenerationResult:
    long_image: Any
    stock_image: Any
    seed: int | None
    ok: bool
    message: str
    notes: tuple[str, ...] = ()  # what the visitor should know about a run that worked (e.g. the prompt was cut)

    @property
    def status_html(self) -> str:
        kind = "ok" if self.ok else "error"
        role = "status" if self.ok else "alert"
        notes = "".join(f"<div class='note'>{html.escape(note, quote=False)}</div>" for note in self.notes)
        return f"<div class='status {kind}' role='{role}'>{html.escape(self.message, quote=False)}{notes}</div>"


def _family_key(family: Any) -> defaults.Family:
    """The family key of a label the page sends (``"SD3"`` -> ``"sd3"``)."""
    if not isinstance(family, str) or family not in FAMILY_KEYS:
        choices = f"{', '.join(FAMILIES[:-1])} or {FAMILIES[-1]}"
        raise DemoInputError(f"Unknown model family {_shown(family)}: choose {choices}.")
    return FAMILY_KEYS[family]


def _checked_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise DemoInputError(f"{name} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DemoInputError(f"{name} must be a number, got {_shown(value)}.") from None
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise DemoInputError(f"{name} must be a whole number from {low} to {high}, got {_shown(value)}.")
    return int(number)


def _checked_text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DemoInputError(f"{name} must be text, got {type(value).__name__} {_shown(value)}.")
    return value


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)``, shortened: a message must stay one readable line whatever was sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _prompt_notes(prompt: str, tokenizer: Any) -> list[str]:
    """A note when Long-CLIP does not read the whole (already character-capped) prompt."""
    from longclip_diffusion.prompt_syntax import count_tokens

    counted = count_tokens(prompt, limit=LONG_CLIP_LIMIT, tokenizer=tokenizer)
    if not counted.dropped_text:
        return []
    dropped = " ".join(counted.dropped_text.split())
    dropped = dropped if len(dropped) <= 60 else dropped[:59] + "…"
    return [
        f"The prompt is {counted.num_tokens} tokens; Long-CLIP reads the first {LONG_CLIP_LIMIT}, so it did not "
        f"read: “{dropped}”."
    ]


class DemoBackend:
    """Everything the page's buttons do, without Gradio (tests call it directly)."""

    def __init__(
        self,
        model_loader: ModelLoader | None = None,
        *,
        tokenizer: Any = None,
        max_models: int = 1,
        embedding_cache_size: int = 32,
        allowed_models: AllowedModels | None = None,
    ):
        self.models = ModelCache(model_loader or load_models, max_models=max_models)
        self.embeddings = EmbeddingCache(embedding_cache_size)
        self.tokenizer = tokenizer
        self.allowed = allowed_models or AllowedModels()
        # Pipelines keep per-run state (scheduler timesteps): one generation at a time, whatever the
        # Gradio queue's concurrency says.
        self._generation_lock = threading.Lock()

    # -- token counter ---------------------------------------------------------------------
    def count(self, prompt: str, family: str = SD15) -> str:
        try:
            t5_limit = T5_MAX_SEQUENCE_LENGTH.get(FAMILY_KEYS.get(family))
            return token_counter_html(_checked_text(prompt, "Prompt"), tokenizer=self.tokenizer, t5_limit=t5_limit)
        except Exception as exc:  # the counter must never break the page
            logger.exception("token counter failed")
            return f"<div class='token-counter error'>{html.escape(friendly_error(exc))}</div>"

    # -- generation ------------------------------------------------------------------------
    def _embeddings(self, pipe: Any, spec: ModelSpec, encoder: str, prompt: str, negative: str) -> dict:
        key = (spec, encoder, prompt, negative)
        return self.embeddings.get(key, lambda: encode(pipe, spec.family, prompt, negative))

    def _run(self, pipe, embeds, *, seed, steps, guidance, width, height, on_step) -> Any:
        import torch

        generator = torch.Generator(device="cpu").manual_seed(seed)

        def callback(_pipe, i, _t, callback_kwargs):
            on_step(i + 1)
            return callback_kwargs

        output = pipe(
            **embeds,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            generator=generator,
            callback_on_step_end=callback,
            output_type="pil",
        )
        return output.images[0]

    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: Any = 0,
        steps: Any = 25,
        guidance: Any = 7.5,
        width: Any = 512,
        height: Any = 512,
        family: str = SD15,
        base: str = DEFAULT_BASE[SD15],
        long_clip: str = defaults.DEFAULT_LONG_CLIP,
        compare: bool = True,
        progress: Callable[..., Any] | None = None,
    ) -> GenerationResult:
        if progress is None:  # (not `or`: an idle gr.Progress has len 0, so it is falsy)
            progress = lambda *args, **kwargs: None  # noqa: E731
        used_seed = None
        spec = None
        try:
            # Cut huge prompts first: nothing below (counting, encoding, the cache key) sees more than the cap.
            prompt, prompt_note = cap_prompt(_checked_text(prompt, "Prompt"))
            negative_prompt, negative_note = cap_prompt(
                _checked_text(negative_prompt, "Negative prompt"), "negative prompt"
            )
            prompt, negative_prompt = prompt.strip(), negative_prompt.strip()
            if not prompt:
                raise DemoInputError("Type a prompt first.")
            notes = [note for note in (prompt_note, negative_note) if note]
            if seed is None or seed == "":
                seed = random.randint(0, MAX_SEED)
            used_seed = _checked_int(seed, "Seed", 0, MAX_SEED)
            steps = _checked_int(steps, "Steps", 1, MAX_STEPS)
            width = _checked_int(width, "Width", MIN_SIZE, MAX_SIZE)
            height = _checked_int(height, "Height", MIN_SIZE, MAX_SIZE)
            if width % 8 or height % 8:
                raise DemoInputError(f"Width and height must be multiples of 8, got {width}×{height}.")
            try:
                if isinstance(guidance, bool):
                    raise TypeError
                guidance = float(guidance)
            except (TypeError, ValueError, OverflowError):
                raise DemoInputError(f"Guidance must be a number, got {_shown(guidance)}.") from None
            if not 0.0 <= guidance <= MAX_GUIDANCE:
                raise DemoInputError(f"Guidance must be from 0 to {MAX_GUIDANCE:g}, got {guidance:g}.")
            if not isinstance(compare, bool):
                raise DemoInputError(f"Compare must be true or false, got {_shown(compare)}.")
            base = _checked_text(base, "Base model").strip()
            long_clip = _checked_text(long_clip, "Long-CLIP checkpoint").strip()
            if not base:
                raise DemoInputError("Choose a base model: a Hub id or a local folder.")
            if not long_clip:
                raise DemoInputError(
                    'Choose a Long-CLIP checkpoint (file, folder, Hub id), "stretch", or "none" to keep the base\'s.'
                )
            spec = ModelSpec(base=base, long_clip=long_clip, family=_family_key(family))
            if negative_prompt and spec.family in NO_NEGATIVE_PROMPT:
                notes.append(f"{family} reads no negative prompt (its guidance is distilled): it was not used.")

            loaded = spec in self.models
            if not loaded:
                self._check_sources(spec, family)
            notes += _prompt_notes(prompt, self.tokenizer)
            progress(0.0, desc="Loading models (first time only)…" if not loaded else "Waiting for the model…")
            with self._generation_lock:
                result = self._generate(spec, prompt, negative_prompt, used_seed, steps, guidance, width, height,
                                        compare, progress)
            result.notes = tuple(notes)
            return result
        except Exception as exc:  # shown in the page; the server keeps serving
            if not isinstance(exc, DemoInputError):
                logger.exception("generation failed")
            model = spec.base if spec is not None else None
            return GenerationResult(None, None, used_seed, False, friendly_error(exc, model=model))

    def _check_sources(self, spec: ModelSpec, family: str) -> None:
        """Before loading anything: allowed here, an existing path or a Hub id that answers, the family picked.

        The allow-list is checked first and alone, so a refused path is refused the same whether it exists or not.
        The messages are the ones ``longclip generate`` prints, naming the page's field instead of the flag.
        """
        from longclip_diffusion.sources import HubUnavailableError, detect_family, resolve_source

        fields = (("Base model", spec.base), ("Long-CLIP checkpoint", spec.long_clip))
        for field, value in fields:
            if not self.allowed.permits(value):
                raise DemoInputError(self.allowed.refusal(field))
        try:
            base = resolve_source(spec.base, "Base model")
            if spec.long_clip not in NO_FILE:
                resolve_source(spec.long_clip, "Long-CLIP checkpoint")
        except (FileNotFoundError, ValueError, HubUnavailableError) as exc:
            raise DemoInputError(str(exc)) from None
        detected = detect_family(base) if isinstance(base, Path) else None
        if detected and detected != spec.family:
            raise DemoInputError(
                f"Base model {spec.base} is {FAMILY_NAMES[detected]} (model_index.json), but Model family is "
                f"{family}; choose {FAMILY_NAMES[detected]} under Model family."
            )

    def _generate(self, spec, prompt, negative_prompt, seed, steps, guidance, width, height, compare, progress):
        started = time.perf_counter()
        try:
            models = self.models.get(spec)
            pipes = [("long", models.long_clip)]
            if compare:
                pipes.append(("stock", models.stock()))
        except Exception as exc:
            raise ModelLoadError(spec.base, spec.long_clip) from exc

        total = steps * len(pipes)
        images, cached = {}, 0
        for index, (encoder, pipe) in enumerate(pipes):
            label = "Long-CLIP" if encoder == "long" else "stock CLIP"
            hits_before = self.embeddings.hits
            progress((index * steps, total), desc=f"Encoding prompt ({label})…", unit="steps")
            embeds = self._embeddings(pipe, spec, encoder, prompt, negative_prompt)
            cached += self.embeddings.hits - hits_before

            def on_step(done, index=index, label=label):
                progress((index * steps + done, total), desc=f"{label}: step {done}/{steps}", unit="steps")

            images[encoder] = self._run(
                pipe, embeds, seed=seed, steps=steps, guidance=guidance, width=width, height=height, on_step=on_step
            )
        elapsed = time.perf_counter() - started
        what = "Long-CLIP and stock CLIP" if compare else "Long-CLIP"
        note = " (prompt embeddings from cache)" if cached == len(pipes) else ""
        message = (
            f"{what}: seed {seed}, {steps} steps, guidance {guidance:g}, {width}×{height}, {elapsed:.1f} s{note}."
        )
        return GenerationResult(images.get("long"), images.get("stock"), seed, True, message)


def _family_changed(family: str, base: str, width: int, height: int, guidance: float):
    """Switching the family swaps a default base model, size and guidance for the new family's (custom values are
    kept)."""
    if family not in FAMILIES:
        return base, width, height, guidance
    if not base or base.strip() in DEFAULT_BASE.values():
        base = DEFAULT_BASE[family]
    if width == height and width in DEFAULT_SIZE.values():
        width = height = DEFAULT_SIZE[family]
    if guidance in DEFAULT_GUIDANCE.values():
        guidance = DEFAULT_GUIDANCE[family]
    return base, width, height, guidance


def build_demo(
    model_loader: ModelLoader | None = None,
    *,
    base: str | None = None,
    long_clip: str = defaults.DEFAULT_LONG_CLIP,
    family: defaults.Family | None = None,
    tokenizer: Any = None,
    max_models: int = 1,
    embedding_cache_size: int = 32,
    max_queue: int = 16,
    allowed_models: Iterable[str] | None = None,
    backend: DemoBackend | None = None,
):
    """Build the page. ``model_loader(ModelSpec) -> LoadedModels`` defaults to the library pipelines.

    ``family`` (``"sd15"``, ``"sdxl"``, ``"sd3"``, ``"flux"``): the family picked when the page opens; by default the
    one a local ``base`` folder's ``model_index.json`` names, else SD 1.5. Its default base model, size and guidance
    fill the page.

    ``allowed_models`` (Hub ids, folders, files): load only these and the page's own ``base``/``long_clip``.
    ``None`` allows any source while the page is served on 127.0.0.1 only; :func:`launch_demo` restricts it to
    the page's own models when it serves beyond.
    """
    import gradio as gr

    from longclip_diffusion.sources import detect_family

    family_default = FAMILY_NAMES[family or (detect_family(base) if base else None) or "sd15"]
    base = base or DEFAULT_BASE[family_default]
    allowed = AllowedModels([base, long_clip, *(allowed_models or ())], restricted=allowed_models is not None)
    backend = backend or DemoBackend(
        model_loader, tokenizer=tokenizer, max_models=max_models, embedding_cache_size=embedding_cache_size,
        allowed_models=allowed,
    )
    size = DEFAULT_SIZE[family_default]
    first_prompt, first_negative = EXAMPLES[0][1], EXAMPLES[0][2]

    with gr.Blocks(title="Long-CLIP diffusion", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Long-CLIP diffusion\n"
            f"Stock CLIP reads **{CLIP_LIMIT} tokens** of a prompt and silently drops the rest; "
            f"Long-CLIP reads **{LONG_CLIP_LIMIT}**. Type a long prompt, watch where CLIP would cut it, "
            "and compare both on the same seed. (SD3 and Flux also read the prompt with T5, the same on both sides.)"
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                prompt = gr.Textbox(
                    label="Prompt", value=first_prompt, lines=6, max_lines=20, elem_id="prompt",
                    placeholder="A long, detailed description…",
                )
                counter = gr.HTML(backend.count(first_prompt, family_default), elem_id="token-counter")
                negative = gr.Textbox(label="Negative prompt", value=first_negative, lines=2, elem_id="negative")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=2)
                    compare = gr.Checkbox(
                        label="Also generate with stock CLIP (same seed)", value=True, elem_id="compare", scale=3
                    )
                with gr.Accordion("Settings", open=True):
                    with gr.Row(equal_height=True):
                        seed = gr.Number(
                            label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed", scale=3
                        )
                        randomize = gr.Button("Randomise", elem_id="randomize", scale=1)
                    steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(
                        0.0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE[family_default], step=0.5, label="Guidance",
                        elem_id="guidance",
                    )
                    with gr.Row():
                        width = gr.Slider(MIN_SIZE, MAX_SIZE, value=size, step=64, label="Width", elem_id="width")
                        height = gr.Slider(MIN_SIZE, MAX_SIZE, value=size, step=64, label="Height", elem_id="height")
                with gr.Accordion("Model", open=False):
                    family = gr.Radio(list(FAMILIES), value=family_default, label="Model family", elem_id="family")
                    base_box = gr.Textbox(label="Base model (Hub id or local folder)", value=base, elem_id="base")
                    long_clip_box = gr.Textbox(
                        label='Long-CLIP checkpoint (file, folder, Hub id; "stretch" for no fine-tuning, '
                              '"none" to keep the base\'s own encoder)',
                        value=long_clip, elem_id="long-clip",
                    )
            with gr.Column(scale=6):
                status = gr.HTML("", elem_id="status")
                with gr.Row():
                    long_image = gr.Image(
                        label=f"Long-CLIP ({LONG_CLIP_LIMIT} tokens)", type="pil", format="png",
                        interactive=False, elem_id="longclip-image",
                    )
                    stock_image = gr.Image(
                        label=f"Stock CLIP ({CLIP_LIMIT} tokens)", type="pil", format="png",
                        interactive=False, elem_id="stock-image",
                    )
        gr.Examples(
            examples=[[p, n] for _, p, n in EXAMPLES],
            example_labels=[label for label, _, _ in EXAMPLES],
            inputs=[prompt, negative],
            label="Example prompts (long on purpose)",
        )

        for changed in (prompt, family):
            changed.change(
                backend.count, inputs=[prompt, family], outputs=counter, show_progress="hidden",
                trigger_mode="always_last", concurrency_limit=None, api_name=False,
            )
        randomize.click(
            lambda: random.randint(0, MAX_SEED), outputs=seed, show_progress="hidden",
            concurrency_limit=None, api_name=False,
        )
        family.change(
            _family_changed, inputs=[family, base_box, width, height, guidance],
            outputs=[base_box, width, height, guidance],
            show_progress="hidden", concurrency_limit=None, api_name=False,
        )

        def on_generate(
            prompt, negative, seed, steps, guidance, width, height, family, base, long_clip, compare,
            progress=gr.Progress(),
        ):
            result = backend.generate(
                prompt, negative, seed, steps, guidance, width, height, family, base, long_clip, compare,
                progress=progress,
            )
            suffix = f" · seed {result.seed}" if result.ok else ""
            return (
                gr.Image(value=result.long_image, label=f"Long-CLIP ({LONG_CLIP_LIMIT} tokens){suffix}"),
                gr.Image(
                    value=result.stock_image,
                    label=f"Stock CLIP ({CLIP_LIMIT} tokens){suffix}" if compare else "Stock CLIP (off)",
                ),
                result.status_html,
                result.seed if result.seed is not None else gr.update(),  # a bad seed stays as it was sent
            )

        # Clear the last result's message at once; the run itself waits its turn in the queue.
        generate.click(
            lambda: "<div class='status running'>Generating… (waiting for a free slot if others are ahead)</div>",
            outputs=status, queue=False, show_progress="hidden", api_name=False,
        ).then(
            on_generate,
            inputs=[prompt, negative, seed, steps, guidance, width, height, family, base_box, long_clip_box, compare],
            outputs=[long_image, stock_image, status, seed],
            show_progress_on=[long_image, stock_image],
            # Values reach DemoBackend.generate as sent, which checks each with a readable message; Gradio's own
            # checks fail as "the upstream Gradio app has raised an exception" for API callers (seed="abc").
            preprocess=False,
            concurrency_limit=1,
            concurrency_id="generate",
            api_name="generate",
        )

    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    demo.backend = backend
    return demo


def _theme():
    import gradio as gr

    # System fonts only: the page must not reach out to a font CDN (offline use).
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
    )


def launch_demo(
    demo,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Serve the page. Binds to 127.0.0.1 unless ``host`` says otherwise; ``share`` only when asked.

    Served beyond 127.0.0.1, the page loads only the models allowed in :func:`build_demo` and its own defaults.
    """
    if not is_local_only(host, share):
        demo.backend.allowed.restrict()
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        show_error=False,
        ssr_mode=False,
        theme=_theme(),
        css=CSS,
    )


def run_demo(args: argparse.Namespace) -> int:
    """``longclip demo``: build the page with the library pipelines and serve it."""
    if find_spec("gradio") is None:
        raise DemoInputError(
            "the demo needs Gradio, which is not installed; install the demo extra: pip install -e \".[demo]\" "
            "(from the repository)."
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = build_demo(
        base=args.base,
        long_clip=args.long_clip,
        family="sdxl" if args.sdxl else args.family,
        max_queue=args.max_queue,
        allowed_models=args.allow_model,
        model_loader=(lambda spec: load_models(spec, device=args.device)) if args.device else None,
    )
    launch_demo(demo, host=args.host, port=args.port, share=args.share)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; 0.0.0.0 serves the whole network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (needs network)")
    parser.add_argument("--base", default=None,
                        help="base model, Hub id or local folder (default per family: "
                             + ", ".join(f"{key}: {base}" for key, base in defaults.DEFAULT_BASE.items()) + ")")
    parser.add_argument("--long-clip", default=defaults.DEFAULT_LONG_CLIP,
                        help='Long-CLIP checkpoint: file, folder, Hub id, "stretch", or "none" (keep the base\'s '
                             f"encoder) (default {defaults.DEFAULT_LONG_CLIP})")
    parser.add_argument("--allow-model", action="append", default=None, metavar="PATH_OR_ID",
                        help="a Hub id, folder (with everything under it) or file the page may load; repeat it for "
                             "more. Served beyond 127.0.0.1 (--host, --share) the page loads only these and its "
                             "--base/--long-clip; on 127.0.0.1 any source unless this is given")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("--family", choices=defaults.FAMILIES, default=None,
                        help="model family the page starts with (default: the one a local --base folder's "
                             "model_index.json names, else sd15)")
    family.add_argument("--sdxl", action="store_true", help="same as --family sdxl")
    parser.add_argument("--device", default=None, help="torch device (default: cuda, mps, else cpu)")
    parser.add_argument("--max-queue", type=int, default=16, help="most requests waiting in the queue")
    parser.set_defaults(handler=run_demo)
    return parser


def add_commands(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command to the ``longclip`` command line (called by the core cli.py)."""
    parser = subparsers.add_parser(
        "demo",
        help="web demo: long prompt to image, Long-CLIP vs stock CLIP side by side",
        description="Start the Gradio demo on http://127.0.0.1 (local only unless --host/--share).",
    )
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m longclip_diffusion.demo"))
    args = parser.parse_args(argv)
    return args.handler(args)
