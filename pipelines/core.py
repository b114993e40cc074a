"""What every Long-CLIP pipeline family shares; a family's own file says only what differs.

A family file (``stable_diffusion.py``, ``stable_diffusion_xl.py``, …) says which encoders it swaps, how their hidden
states and pooled vectors are assembled, and registers itself with :func:`register_family` so that
:func:`apply_long_clip` can pick it. Everything else lives here, once:

* **Modes** (:class:`Mode`): ``"stretch"`` (KPS of the pipeline's own encoder), ``"windows"`` (a 77-position encoder
  read in windows), ``"supplied"`` (a long encoder given by the user). :func:`is_mode` tells a mode string from a
  checkpoint or model passed in the same argument.
* **Settings** (:func:`get_setting`, :func:`set_settings`): kept in the config of our pipeline classes (saved with
  them); on a stock diffusers pipeline given Long-CLIP by :func:`apply_long_clip`, on the object
  (``_long_clip_settings``), since keys its ``__init__`` does not take break diffusers' ``components``.
* **Encoder swaps** (:func:`load_encoder`, :func:`put_encoder`, :func:`stretch_encoder`), transactional: the new encoder
  is read on the CPU and checked (readable, width matching the denoiser) while the old one stays in the pipeline, so a
  failed read leaves the pipeline as it was. Only then is the old one released and the new one moved to its device and
  dtype: the device never holds both (the CPU briefly does, while the new one is read). A ``"stretch"`` of an encoder
  that is already long is refused before anything changes.
* **Prompt and call checks** (:func:`prompt_list`, :func:`check_prompt_embeds`, :func:`check_finite`,
  :func:`checked_call`): bad arguments get one clear ``ValueError``/``TypeError`` before any denoising; NaN/Inf
  embeddings never reach the denoiser unnoticed.
* **Tokenizers** (:func:`tokenizer_for`): a pipeline's tokenizer pads the way its encoder is read and reads as many
  tokens, so the folder ``save_pretrained`` writes gives the same embeddings in stock diffusers. A tokenizer given in
  is never changed: another pipeline may share it (``from_pipe``, ``**pipeline.components``); a copy is set instead.
"""

from __future__ import annotations

import copy
import functools
import inspect
import numbers
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.models.lora import adjust_lora_scale_text_encoder
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
from torch import nn
from transformers import CLIPTokenizer

from ..checkpoints import check_text_encoder_width, load_text_encoder
from ..positions import CLIP_POSITIONS, stretch_text_encoder
from ..prompts import num_positions
from ..tokenizer import CONTEXT_LENGTH, load_tokenizer


class Mode(StrEnum):
    """How an encoder comes to read 248 tokens."""

    STRETCH = "stretch"
    WINDOWS = "windows"
    SUPPLIED = "supplied"


def is_mode(value: Any, mode: Mode) -> bool:
    """Whether ``value`` (a mode string, a checkpoint path or a model) names ``mode``."""
    return isinstance(value, str) and value == mode


# --------------------------------------------------------------------------------------------------------------------
# Settings


def get_setting(pipeline: DiffusionPipeline, name: str, default: Any) -> Any:
    """A Long-CLIP setting: from the config (our classes), else from the settings kept on a stock pipeline."""
    if name in pipeline.config:
        return pipeline.config[name]
    return getattr(pipeline, "_long_clip_settings", {}).get(name, default)


def set_settings(pipeline: DiffusionPipeline, **settings: Any) -> None:
    """Store settings in the config when the pipeline's ``__init__`` takes them (ours: saved with it); on a stock
    pipeline (img2img, ControlNet, …) keep them on the object."""
    parameters = inspect.signature(type(pipeline).__init__).parameters
    if all(name in parameters for name in settings):
        pipeline.register_to_config(**settings)
    else:
        pipeline._long_clip_settings = {**getattr(pipeline, "_long_clip_settings", {}), **settings}


def dtype_argument(kwargs: dict[str, Any]) -> torch.dtype | None:
    """The dtype asked for as ``dtype`` or ``torch_dtype``, left in ``kwargs`` as ``dtype`` (diffusers ≥ 0.40 reads
    that name and deprecates ``torch_dtype``), so either spelling works without a deprecation warning."""
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return dtype


# --------------------------------------------------------------------------------------------------------------------
# Tokenizers


def tokenizer_for(
    tokenizer: CLIPTokenizer | None, pad_token_id: int | None = None, model_max_length: int | None = None
) -> CLIPTokenizer | None:
    """``tokenizer`` padding with ``pad_token_id`` (0 is ``"!"`` in CLIP's vocabulary, 49407 ``<|endoftext|>``) and
    reading ``model_max_length`` tokens (``None``: as it is). When either differs this is a copy: the given object may
    be shared with another pipeline, whose prompts must read as before."""
    if tokenizer is None:
        return None
    pad_differs = pad_token_id is not None and tokenizer.pad_token_id != pad_token_id
    length_differs = model_max_length is not None and tokenizer.model_max_length != model_max_length
    if not (pad_differs or length_differs):
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    if pad_differs:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id)
    if length_differs:
        tokenizer.model_max_length = model_max_length
    return tokenizer


def text_tokenizer(pipeline: DiffusionPipeline) -> CLIPTokenizer:
    """The tokenizer prompts are read with: the pipeline's own (``tokenizer``, else ``tokenizer_2``) unless its pad
    token is ``"!"`` (SDXL's tokenizer_2, or a tokenizer padding with id 0), which would read a literal "!" as padding.
    Then a plain CLIP tokenizer that takes over the tokens added to the pipeline's (textual inversion), with the same
    ids. Padding is never the tokenizer's: :func:`~longclip_diffusion.prompts.tokenize_prompt` pads explicitly."""
    tokenizers = [getattr(pipeline, name, None) for name in ("tokenizer", "tokenizer_2")]
    tokenizers = [tokenizer for tokenizer in tokenizers if tokenizer is not None]
    for tokenizer in tokenizers:
        if "!" not in tokenizer.all_special_tokens:
            return tokenizer
    fallback = getattr(pipeline, "_long_clip_tokenizer", None)
    if fallback is None:
        fallback = load_tokenizer(CONTEXT_LENGTH)
        pipeline._long_clip_tokenizer = fallback
    if tokenizers and len(tokenizers[0]) > len(fallback):
        added = sorted((token_id, token) for token, token_id in tokenizers[0].get_added_vocab().items())
        fallback.add_tokens([token for token_id, token in added if token_id >= len(fallback)])
    return fallback


# --------------------------------------------------------------------------------------------------------------------
# Encoder swaps


def load_encoder(
    source: Any,
    *,
    where: str,
    expected_width: int | None,
    with_projection: bool = False,
    dtype: torch.dtype | None = None,
    loader: Callable[..., nn.Module] = load_text_encoder,
) -> nn.Module:
    """Read a new encoder (file, folder, Hub id or model) on the CPU and check its width against the denoiser's
    (``expected_width``, ``None``: no denoiser to check against), before anything in a pipeline changes."""
    encoder = loader(source, with_projection=with_projection, torch_dtype=dtype)
    if expected_width is not None:
        check_text_encoder_width(encoder, expected_width, where=where)
    return encoder


def put_encoder(pipeline: DiffusionPipeline, name: str, encoder: nn.Module) -> None:
    """Replace ``pipeline.<name>`` by an encoder already read and checked: the old one is released first, then the new
    one is moved to the old one's device and dtype (the device never holds both)."""
    old = getattr(pipeline, name)
    device, dtype = old.device, old.dtype
    pipeline.register_modules(**{name: None})
    del old
    # register_modules, not setattr: after a None, diffusers' __setattr__ would record the new one as (None, None) in
    # model_index.json and save_pretrained would leave it out.
    pipeline.register_modules(**{name: encoder.to(device=device, dtype=dtype)})


def check_stretchable(encoder: nn.Module, name: str) -> None:
    """Refuse to KPS-stretch an encoder that is already long (it would spread 248 positions to 932)."""
    if num_positions(encoder) > CLIP_POSITIONS:
        raise ValueError(
            f"`{name}` already reads {num_positions(encoder)} positions (a Long-CLIP, or an encoder stretched before); "
            f"'stretch' works on a {CLIP_POSITIONS}-position CLIP. Load the pipeline without `long_clip` to keep it, "
            "or pass a Long-CLIP checkpoint instead of 'stretch'."
        )


def stretch_encoder(pipeline: DiffusionPipeline, name: str, keep: int) -> None:
    """KPS-stretch ``pipeline.<name>`` in place (refused for an encoder that is already long)."""
    encoder = getattr(pipeline, name)
    check_stretchable(encoder, name)
    stretch_text_encoder(encoder, keep=keep)


# --------------------------------------------------------------------------------------------------------------------
# Prompts, embeddings and call arguments


def prompt_list(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None = None) -> list[str] | None:
    """``prompt`` as a list (``None`` when ``prompt_embeds`` stand in for it); refuses an empty list, non-text items,
    and neither prompt nor embeddings."""
    if prompt is None:
        if prompt_embeds is None:
            raise ValueError("Pass `prompt` (a string or a list of strings) or `prompt_embeds`; both are None.")
        return None
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(item, str) for item in prompts):
        raise TypeError(f"`prompt` must be a string or a list of strings; got {type(prompt).__name__} {prompt!r:.80}.")
    if not prompts:
        raise ValueError("`prompt` is an empty list; pass at least one prompt.")
    return list(prompts)


def batch_of(prompt: str | list[str] | None, batch_size: int, name: str, default: list[str]) -> list[str]:
    """A second prompt or a negative prompt as one text per prompt of the batch (``None``: ``default``)."""
    if prompt is None:
        return default
    if isinstance(prompt, str):
        return [prompt] * batch_size
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(item, str) for item in prompt):
        raise TypeError(f"`{name}` must be a string or a list of strings; got {type(prompt).__name__}.")
    if len(prompt) != batch_size:
        raise ValueError(
            f"`{name}` has batch size {len(prompt)}, but `prompt` has batch size {batch_size}. "
            f"Pass one {name} per prompt."
        )
    return list(prompt)


def negative_prompts(prompt: str | list[str] | None, negative_prompt: str | list[str] | None, batch_size: int) -> list[str]:
    """The negative prompt, one per prompt; empty when none (diffusers' rule: same type as ``prompt``)."""
    if negative_prompt is not None and prompt is not None and type(prompt) is not type(negative_prompt):
        raise TypeError(
            f"`negative_prompt` should be the same type as `prompt`, but got {type(negative_prompt)} != {type(prompt)}."
        )
    return batch_of(negative_prompt, batch_size, "negative_prompt", [""] * batch_size)


def check_images_per_prompt(num_images_per_prompt: Any) -> None:
    if not isinstance(num_images_per_prompt, numbers.Integral) or num_images_per_prompt < 1:
        raise ValueError(f"`num_images_per_prompt` must be a whole number ≥ 1; got {num_images_per_prompt!r}.")


def check_prompt_embeds(embeds: torch.Tensor | None, name: str, width: int | None, rank: int = 3) -> None:
    """Embeddings passed in: a tensor ``[batch, positions, width]`` (``rank`` 3) or ``[batch, width]`` (pooled)."""
    if embeds is None:
        return
    shape = "[batch, positions, width]" if rank == 3 else "[batch, width]"
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != rank:
        got = f"shape {tuple(embeds.shape)}" if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ValueError(f"`{name}` must be a tensor {shape}; got {got}. Make it with `pipe.encode_prompt`.")
    if width is not None and embeds.shape[-1] != width:
        raise ValueError(
            f"`{name}` is {embeds.shape[-1]} wide but this pipeline needs {width} (shape {shape}); "
            "make it with this pipeline's `encode_prompt`."
        )


def check_same_shape(prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None, name: str) -> None:
    """``prompt_embeds`` passed in must have the shape of the negative embeddings this pipeline makes."""
    if negative_prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape:
        raise ValueError(
            f"`{name}` has shape {tuple(prompt_embeds.shape)} but the negative embeddings have "
            f"{tuple(negative_prompt_embeds.shape)}; Long-CLIP embeddings have {CONTEXT_LENGTH} positions. Make both "
            "with this pipeline's `encode_prompt`, or pass `negative_prompt_embeds` of the same shape."
        )


def check_finite(embeds: torch.Tensor | None, name: str) -> None:
    """Never let NaN/Inf embeddings reach the denoiser (they make a black or noise image)."""
    if embeds is not None and not bool(torch.isfinite(embeds).all()):
        raise ValueError(
            f"`{name}` holds NaN or infinite values, which would give a black image. Check the prompt weights, the "
            "text encoder's dtype (float16 can overflow) and any embeddings passed in."
        )


def repeat_per_image(embeds: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    return embeds.repeat_interleave(num_images_per_prompt, dim=0)


@contextmanager
def scaled_lora(
    pipeline: DiffusionPipeline, lora_scale: float | None, loader_class: type, encoders: list[nn.Module | None]
) -> Iterator[None]:
    """Scale the text encoders' LoRA layers by ``lora_scale`` for the block, with either backend; unscaled on exit
    even when encoding raises."""
    # Adapted from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl.StableDiffusionXLPipeline.encode_prompt
    encoders = [encoder for encoder in encoders if encoder is not None]
    active = lora_scale is not None and isinstance(pipeline, loader_class)
    if active:
        pipeline._lora_scale = lora_scale
        for encoder in encoders:
            if USE_PEFT_BACKEND:
                scale_lora_layers(encoder, lora_scale)
            else:
                adjust_lora_scale_text_encoder(encoder, lora_scale)
    try:
        yield
    finally:
        if active and USE_PEFT_BACKEND:
            for encoder in encoders:
                unscale_lora_layers(encoder, lora_scale)


def check_call_arguments(arguments: dict[str, Any]) -> None:
    """The ``__call__`` arguments diffusers lets through to a crash or a noise image: steps, size, images."""
    steps = arguments.get("num_inference_steps")
    schedule_given = arguments.get("timesteps") is not None or arguments.get("sigmas") is not None
    if not schedule_given and (not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"`num_inference_steps` must be a whole number ≥ 1; got {steps!r}.")
    for name in ("height", "width"):
        value = arguments.get(name)
        if value is not None and (not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"`{name}` must be a positive number of pixels (a multiple of 8); got {value!r}.")
    if "num_images_per_prompt" in arguments:
        check_images_per_prompt(arguments["num_images_per_prompt"])


def checked_call(parent_call: Callable) -> Callable:
    """A diffusers pipeline's ``__call__`` with :func:`check_call_arguments` first; same signature and docstring."""
    signature = inspect.signature(parent_call)

    @functools.wraps(parent_call)
    def __call__(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs)
        arguments.apply_defaults()
        check_call_arguments(arguments.arguments)
        return parent_call(self, *args, **kwargs)

    return __call__


# --------------------------------------------------------------------------------------------------------------------
# Families and the dispatcher


@dataclass(frozen=True)
class Family:
    """A model family: how to recognise its pipelines and how to give them Long-CLIP.

    ``apply(pipeline, long_clip, keep, **options)`` swaps the encoders in place (transactional) and installs
    ``encode_prompt``; ``options`` names the keyword options it takes beyond ``long_clip`` and ``keep``.
    """

    label: str
    matches: Callable[[DiffusionPipeline], bool]
    apply: Callable[..., DiffusionPipeline]
    options: tuple[str, ...] = ()


FAMILIES: list[Family] = []


def register_family(family: Family) -> None:
    FAMILIES.append(family)


def apply_long_clip(pipeline: DiffusionPipeline, long_clip: Any = None, keep: int = 20, **options: Any) -> DiffusionPipeline:
    """Give an existing diffusers pipeline of any kind (text-to-image, img2img, inpaint, ControlNet, refiner) Long-CLIP,
    in place; returns it.

    ``long_clip``: a Long-CLIP checkpoint in any format, a text-encoder model, or ``"stretch"`` to KPS-stretch the
    pipeline's own CLIP (``keep`` rows kept). The family is picked from the pipeline's components (SD 1.x, SDXL, …);
    family options (SDXL: ``bigg``, ``hidden_state``) go to it. On any error the pipeline is left as it was.
    """
    family = next((family for family in FAMILIES if family.matches(pipeline)), None)
    if family is None:
        supported = ", ".join(family.label for family in FAMILIES)
        raise TypeError(f"apply_long_clip: {type(pipeline).__name__} is not a pipeline of a supported family ({supported}).")
    for name, value in options.items():
        if name not in family.options and value is not None:
            owners = [other.label for other in FAMILIES if name in other.options]
            raise ValueError(
                f"`{name}` does not apply to {family.label} pipelines (it is for {' and '.join(owners) or 'no'} "
                "pipelines only)."
            )
    return family.apply(pipeline, long_clip, keep, **{name: options.get(name) for name in family.options})


def install_encode_prompt(pipeline: DiffusionPipeline, encode_prompt: Callable, pipeline_class: type) -> None:
    """A stock pipeline gets the family's Long-CLIP ``encode_prompt`` on the object; our classes have it already."""
    if not isinstance(pipeline, pipeline_class):
        pipeline.encode_prompt = types.MethodType(encode_prompt, pipeline)
