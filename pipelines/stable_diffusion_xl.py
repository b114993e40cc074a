"""`LongCLIPStableDiffusionXLPipeline`: SDXL with both text encoders reading prompts of up to 248 tokens.

SDXL concatenates its two encoders' hidden states token by token (CLIP-L 768 + OpenCLIP-bigG 1280 = 2048), so both
must give the same number of positions. ``text_encoder`` becomes Long-CLIP-L (248 positions); ``text_encoder_2``
(bigG, which also gives the pooled embedding) follows one of three modes, stored in the pipeline config as
``long_clip_bigg_mode``:

``"stretch"`` (default, the reference Long-CLIP SDXL recipe)
    bigG's 77-row position table is stretched to 248 rows with KPS, training-free. Rows 0–20 are bigG's own, so a
    prompt of up to 19 tokens gives exactly stock bigG's hidden states; longer prompts read later tokens at
    interpolated positions bigG never trained on. Pooled: the stretched bigG's projected end-of-text feature.
``"windows"``
    bigG keeps its 77 positions and reads the prompt in windows of 75 tokens, each encoded as
    ``[start, 75 tokens, end, pad 0…]`` (one batch), and the window outputs are laid on Long-CLIP's 248 positions so
    that position ``p`` gets the output of the same token (see :func:`encode_windows` for every slot). Pooled: the
    first window's projected end-of-text feature, as ComfyUI and compel do, so it only sees the first 75 tokens.
``"supplied"``
    a long bigG given by the user (any 248-position OpenCLIP-bigG, e.g. a fine-tune); encoded in one pass as
    ``"stretch"``.

Hidden states (``long_clip_hidden_state``): ``"penultimate"`` (default) is SDXL's convention — the layer before the
last, without the final layer norm, what the SDXL UNet was trained on; ``clip_skip`` = k goes k layers further back.
``"final_norm"`` is the reference recipe's variant — the last layer after the final norm (its
``encode_text_full``). It departs from what the UNet saw in training, which the reference notes show as degraded faces;
it is offered to reproduce the reference images.

Tokenization: the prompt is tokenized once per encoder with the pipeline's Long-CLIP tokenizer (``tokenizer``, CLIP's
BPE vocabulary, which bigG shares). ``tokenizer_2`` is never used for text: its pad token is ``"!"``, so it would turn a
literal ``"!"`` into pad id 0 instead of BPE token 256. Padding after end-of-text: CLIP-L as in SD 1.x
(``long_clip_pad_token_id``: 0 for a fine-tuned Long-CLIP, 49407 for SDXL's own CLIP-L stretched), bigG with 0
(SDXL's clip_g convention). Every prompt fills all 248 positions, so prompt and negative embeddings always have equal
shapes and a batch gives each prompt the embedding it gets alone.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.models.lora import adjust_lora_scale_text_encoder
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
from diffusers.utils.torch_utils import get_module_execution_device
from torch import nn
from transformers import CLIPTokenizer
from transformers.activations import ACT2FN

from ..checkpoints import load_text_encoder
from ..positions import stretch_text_encoder
from ..prompts import (
    PromptEncoding,
    apply_weights,
    encode_prompts,
    num_positions,
    project_end_of_text,
    select_hidden_states,
    split_into_windows,
    tokenize_prompt,
    window_layout,
)
from ..tokenizer import CONTEXT_LENGTH, END_OF_TEXT, START_OF_TEXT, load_tokenizer
from .stable_diffusion import STRETCH, _dtype_argument, _normalize_negative, _repeat_per_image

logger = logging.getLogger(__name__)

WINDOWS = "windows"
SUPPLIED = "supplied"
BIGG_MODES = (STRETCH, WINDOWS, SUPPLIED)
HIDDEN_STATES = ("penultimate", "final_norm")
BIGG_PAD_TOKEN_ID = 0

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from longclip_diffusion.pipelines import LongCLIPStableDiffusionXLPipeline

        >>> pipe = LongCLIPStableDiffusionXLPipeline.from_pretrained(
        ...     "stabilityai/stable-diffusion-xl-base-1.0",
        ...     long_clip="BeichenZhang/LongCLIP-L",  # CLIP-L → Long-CLIP-L
        ...     bigg="stretch",  # or "windows", or a 248-position bigG checkpoint
        ...     torch_dtype=torch.float16,
        ... ).to("cuda")
        >>> image = pipe("A lighthouse on a basalt cliff at dusk, ... (up to 248 tokens)").images[0]
        ```
"""


# --------------------------------------------------------------------------------------------------------------------
# Encoding


def _text_tokenizer(pipeline: DiffusionPipeline) -> CLIPTokenizer:
    """The tokenizer prompts are read with: the pipeline's own unless its pad token is ``"!"`` (SDXL's tokenizer_2,
    which would read a literal "!" as padding). Then a plain CLIP tokenizer that takes over the tokens added to
    ``tokenizer_2`` (textual inversion on a refiner), with the same ids."""
    for tokenizer in (getattr(pipeline, "tokenizer", None), getattr(pipeline, "tokenizer_2", None)):
        if tokenizer is not None and "!" not in tokenizer.all_special_tokens:
            return tokenizer
    fallback = getattr(pipeline, "_long_clip_tokenizer", None)
    if fallback is None:
        fallback = load_tokenizer(CONTEXT_LENGTH)
        pipeline._long_clip_tokenizer = fallback
    source = getattr(pipeline, "tokenizer_2", None)
    if source is not None and len(source) > len(fallback):
        added = sorted((token_id, token) for token, token_id in source.get_added_vocab().items())
        fallback.add_tokens([token for token_id, token in added if token_id >= len(fallback)])
    return fallback


def _config(pipeline: DiffusionPipeline, name: str, default):
    """A Long-CLIP setting: from the config (this class), else from the settings kept on a stock pipeline."""
    if name in pipeline.config:
        return pipeline.config[name]
    return getattr(pipeline, "_long_clip_settings", {}).get(name, default)


def _set_config(pipeline: DiffusionPipeline, **settings) -> None:
    """Store settings in the config of this class (saved with it); on a stock pipeline (img2img, ControlNet, …) keep
    them on the object, since keys its ``__init__`` does not take break diffusers' ``components``."""
    if isinstance(pipeline, LongCLIPStableDiffusionXLPipeline):
        pipeline.register_to_config(**settings)
    else:
        pipeline._long_clip_settings = {**getattr(pipeline, "_long_clip_settings", {}), **settings}


def encode_windows(
    text_encoder: nn.Module,
    tokenizer: CLIPTokenizer,
    prompts: list[str],
    *,
    length: int = CONTEXT_LENGTH,
    pad_token_id: int = BIGG_PAD_TOKEN_ID,
    clip_skip: int | None = None,
    hidden_state: str = "penultimate",
    device: torch.device | str | None = None,
) -> PromptEncoding:
    """Encode prompts of up to ``length`` positions with a shorter encoder (e.g. bigG's 77) in windows.

    The prompt's tokens (weights parsed as everywhere) are split into windows ``[start, 75 tokens, end, pad…]``; all
    windows of all prompts go through the encoder as one batch, and Long-CLIP's ``length`` positions are filled from
    them as :func:`~longclip_diffusion.prompts.window_layout` says (each token from its own window; end and padding
    from the last window). An empty prompt is one window ``[start, end, pad…]``. Per-token weights are applied on the
    laid-out states, as in one-pass encoding (around the laid-out empty prompt, encoded in the same batch).
    Pooled: the first window's projected end-of-text feature (covers only the first 75 tokens).
    """
    device = device or next(text_encoder.parameters()).device
    window_length = num_positions(text_encoder)
    tokenized = [tokenize_prompt(tokenizer, prompt, length, pad_token_id) for prompt in prompts]
    weights = torch.stack([item.weights for item in tokenized]).to(device)
    weighted = bool((weights != 1).any())
    if weighted:  # the empty prompt rides along, as the weighting's anchor (see encode_prompts)
        tokenized.append(tokenize_prompt(tokenizer, "", length, pad_token_id))

    windows, first_window, window_index, slot_index = [], [], [], []
    for item in tokenized:
        count = min(item.num_tokens, length - 2)
        ids = item.input_ids[1 : 1 + count].tolist()
        first = len(windows)
        first_window.append(first)
        windows.extend(split_into_windows(ids, window_length, START_OF_TEXT, END_OF_TEXT, pad_token_id))
        window, slot = window_layout(count, length, window_length)
        window_index.append(window + first)
        slot_index.append(slot)

    window_ids = torch.tensor(windows, dtype=torch.long, device=device)
    need_layers = clip_skip is not None or hidden_state == "penultimate"
    output = text_encoder(window_ids, output_hidden_states=need_layers)
    states = select_hidden_states(text_encoder, output, clip_skip=clip_skip, hidden_state=hidden_state)
    hidden_states = states[torch.stack(window_index).to(device), torch.stack(slot_index).to(device)]

    first = torch.tensor(first_window[: len(prompts)], device=device)
    pooled = project_end_of_text(text_encoder, window_ids[first], output.last_hidden_state[first])
    if weighted:
        empty, hidden_states = hidden_states[-1:], hidden_states[:-1]
        hidden_states = apply_weights(hidden_states, weights, empty)
    return PromptEncoding(hidden_states, pooled)


def _encode_texts(
    pipeline: DiffusionPipeline, prompts: list[str], prompts_2: list[str], clip_skip: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both encoders on one batch of prompts: ``([B, 248, 768 + 1280], pooled [B, 1280])`` (bigG only for a refiner)."""
    text_encoder, text_encoder_2 = pipeline.text_encoder, pipeline.text_encoder_2
    if text_encoder_2 is None:
        raise ValueError("An SDXL pipeline needs `text_encoder_2` (bigG): it gives the pooled prompt embedding.")
    tokenizer = _text_tokenizer(pipeline)
    mode = _config(pipeline, "long_clip_bigg_mode", STRETCH)
    hidden_state = _config(pipeline, "long_clip_hidden_state", "penultimate")
    if isinstance(pipeline, TextualInversionLoaderMixin):
        prompts = pipeline.maybe_convert_prompt(prompts, tokenizer)
        prompts_2 = pipeline.maybe_convert_prompt(prompts_2, tokenizer)

    parts = []
    length = CONTEXT_LENGTH
    if text_encoder is not None:
        length = num_positions(text_encoder)
        encoding = encode_prompts(
            text_encoder,
            tokenizer,
            prompts,
            pad_token_id=_config(pipeline, "long_clip_pad_token_id", 0),
            clip_skip=clip_skip,
            hidden_state=hidden_state,
            device=get_module_execution_device(text_encoder),
        )
        parts.append(encoding.hidden_states)

    options = {"clip_skip": clip_skip, "hidden_state": hidden_state, "device": get_module_execution_device(text_encoder_2)}
    if mode == WINDOWS:
        encoding_2 = encode_windows(text_encoder_2, tokenizer, prompts_2, length=length, **options)
    else:
        if num_positions(text_encoder_2) != length:
            raise ValueError(
                f"`text_encoder_2` reads {num_positions(text_encoder_2)} positions but {length} are needed "
                f"(mode {mode!r}); use apply_long_clip(pipeline, ..., bigg='stretch'), bigg='windows', or supply a "
                f"{length}-position bigG."
            )
        encoding_2 = encode_prompts(
            text_encoder_2, tokenizer, prompts_2, pad_token_id=BIGG_PAD_TOKEN_ID, **options
        )
    parts.append(encoding_2.hidden_states.to(parts[0].device) if parts else encoding_2.hidden_states)
    return torch.cat(parts, dim=-1), encoding_2.pooled


def _as_list(prompt: str | list[str], batch_size: int, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * batch_size
    if len(prompt) != batch_size:
        raise ValueError(f"`{name}` has batch size {len(prompt)}, but `prompt` has batch size {batch_size}.")
    return list(prompt)


def encode_prompt(
    self,
    prompt: str | list[str] | None,
    prompt_2: str | list[str] | None = None,
    device: torch.device | None = None,
    num_images_per_prompt: int = 1,
    do_classifier_free_guidance: bool = True,
    negative_prompt: str | list[str] | None = None,
    negative_prompt_2: str | list[str] | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    pooled_prompt_embeds: torch.Tensor | None = None,
    negative_pooled_prompt_embeds: torch.Tensor | None = None,
    lora_scale: float | None = None,
    clip_skip: int | None = None,
):
    r"""
    Encodes the prompt into text encoder hidden states, both encoders reading up to 248 tokens.

    Same signature and return value as [`~StableDiffusionXLPipeline.encode_prompt`]: `(prompt_embeds,
    negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)`, plus A1111 prompt weighting
    (`(words:1.3)`, `(words)`, `[words]`). `prompt_2`/`negative_prompt_2` go to bigG. `clip_skip` applies to prompt
    and negative prompt alike. With `force_zeros_for_empty_prompt` in the config and no `negative_prompt`, the negative
    embeddings and pooled embeddings are zeros, as in stock SDXL.
    """
    device = device or self._execution_device
    encoders = [encoder for encoder in (self.text_encoder, self.text_encoder_2) if encoder is not None]
    scaled = lora_scale is not None and isinstance(self, StableDiffusionXLLoraLoaderMixin) and USE_PEFT_BACKEND
    if lora_scale is not None and isinstance(self, StableDiffusionXLLoraLoaderMixin):
        self._lora_scale = lora_scale
        for encoder in encoders:
            if USE_PEFT_BACKEND:
                scale_lora_layers(encoder, lora_scale)
            else:
                adjust_lora_scale_text_encoder(encoder, lora_scale)

    try:
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            batch_size = len(prompts)
        else:
            batch_size = prompt_embeds.shape[0]

        if prompt_embeds is None:
            prompts_2 = _as_list(prompt_2 or prompts, batch_size, "prompt_2")
            prompt_embeds, pooled = _encode_texts(self, prompts, prompts_2, clip_skip)
            if pooled_prompt_embeds is None:
                pooled_prompt_embeds = pooled

        zero_out_negative_prompt = negative_prompt is None and self.config.force_zeros_for_empty_prompt
        if do_classifier_free_guidance and negative_prompt_embeds is None and zero_out_negative_prompt:
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
        elif do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = _normalize_negative(prompt, negative_prompt or "", batch_size)
            negatives_2 = negatives if negative_prompt_2 is None else _as_list(negative_prompt_2, batch_size, "negative_prompt_2")
            negative_prompt_embeds, negative_pooled = _encode_texts(self, negatives, negatives_2, clip_skip)
            if negative_pooled_prompt_embeds is None:
                negative_pooled_prompt_embeds = negative_pooled
    finally:
        if scaled:
            for encoder in encoders:
                unscale_lora_layers(encoder, lora_scale)

    dtype = self.text_encoder_2.dtype if self.text_encoder_2 is not None else self.unet.dtype
    prompt_embeds = _repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    pooled_prompt_embeds = _repeat_per_image(pooled_prompt_embeds.to(device=device), num_images_per_prompt)
    if do_classifier_free_guidance:
        negative_prompt_embeds = _repeat_per_image(
            negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt
        )
        negative_pooled_prompt_embeds = _repeat_per_image(
            negative_pooled_prompt_embeds.to(device=device), num_images_per_prompt
        )
    return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds


# --------------------------------------------------------------------------------------------------------------------
# Loading


def _check_options(bigg_mode: str, hidden_state: str) -> None:
    if bigg_mode not in BIGG_MODES:
        raise ValueError(f"`long_clip_bigg_mode` must be one of {BIGG_MODES}; got {bigg_mode!r}.")
    if hidden_state not in HIDDEN_STATES:
        raise ValueError(f"`hidden_state` must be one of {HIDDEN_STATES}; got {hidden_state!r}.")


def load_long_bigg(source: Any, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """A user-supplied long bigG (file, folder, Hub id or model) as a ``CLIPTextModelWithProjection``.

    Single files carry no activation; OpenCLIP's ViT-bigG uses GELU (OpenAI's CLIP QuickGELU), so a 1280-wide
    encoder read from a file is switched to GELU.
    """
    model = load_text_encoder(source, with_projection=True, torch_dtype=torch_dtype)
    config = model.config
    from_file = isinstance(source, (str, Path)) and Path(source).is_file()
    if from_file and config.hidden_size == 1280 and config.hidden_act == "quick_gelu":
        config.hidden_act = "gelu"
        for module in model.modules():
            if hasattr(module, "activation_fn") and hasattr(module, "fc1"):
                module.activation_fn = ACT2FN["gelu"]
    return model


def _prepare_bigg(pipeline: DiffusionPipeline, bigg: Any, length: int, keep: int) -> str:
    """Put bigG in the requested mode (in place); returns the mode name stored in the config."""
    if isinstance(bigg, str) and bigg == WINDOWS:
        return WINDOWS
    if isinstance(bigg, str) and bigg == STRETCH:
        if num_positions(pipeline.text_encoder_2) < length:
            stretch_text_encoder(pipeline.text_encoder_2, keep=keep)
        return STRETCH
    if isinstance(bigg, str) and bigg == SUPPLIED:  # already in place (e.g. a saved pipeline)
        return SUPPLIED
    old = pipeline.text_encoder_2
    device, dtype = old.device, old.dtype
    pipeline.text_encoder_2 = old = None  # release the old encoder before the new one is read
    pipeline.text_encoder_2 = load_long_bigg(bigg).to(device=device, dtype=dtype)
    return SUPPLIED


def _swap_text_encoder(pipeline: DiffusionPipeline, long_clip: Any, keep: int) -> None:
    """CLIP-L → Long-CLIP-L (or SDXL's CLIP-L stretched), as the SD 1.x pipeline does."""
    if isinstance(long_clip, str) and long_clip == STRETCH:
        if num_positions(pipeline.text_encoder) < CONTEXT_LENGTH:  # a saved, already stretched one stays as it is
            stretch_text_encoder(pipeline.text_encoder, keep=keep)
        pad_token_id = END_OF_TEXT
    else:
        old = pipeline.text_encoder
        device, dtype = old.device, old.dtype
        pipeline.text_encoder = old = None
        pipeline.text_encoder = load_text_encoder(long_clip).to(device=device, dtype=dtype)
        pad_token_id = 0
    if pipeline.tokenizer is not None:
        pipeline.tokenizer.model_max_length = num_positions(pipeline.text_encoder)
    _set_config(pipeline, long_clip_pad_token_id=pad_token_id)


def apply_long_clip_xl(
    pipeline: DiffusionPipeline,
    long_clip: Any = None,
    keep: int = 20,
    *,
    bigg: Any = None,
    hidden_state: str | None = None,
) -> DiffusionPipeline:
    """Make an existing SDXL pipeline of any kind (text-to-image, img2img, inpaint, ControlNet, refiner) read 248 tokens.

    ``long_clip``: Long-CLIP-L for ``text_encoder`` (any checkpoint format, or ``"stretch"`` to stretch SDXL's own
    CLIP-L; ``None`` leaves it, e.g. already long). A refiner has no CLIP-L; ``long_clip`` is then ignored.
    ``bigg``: ``"stretch"`` (KPS, training-free), ``"windows"`` (77-token windows) or a 248-position bigG checkpoint
    or model. ``hidden_state``: ``"penultimate"`` (SDXL's convention) or ``"final_norm"`` (the reference recipe).
    ``None`` for either keeps the pipeline's configured choice (defaults ``"stretch"``, ``"penultimate"``).
    Old encoders are released before new ones are read. ``encode_prompt`` becomes Long-CLIP's.
    """
    bigg = bigg if bigg is not None else _config(pipeline, "long_clip_bigg_mode", STRETCH)
    hidden_state = hidden_state or _config(pipeline, "long_clip_hidden_state", "penultimate")
    bigg_mode = bigg if isinstance(bigg, str) and bigg in BIGG_MODES else SUPPLIED
    _check_options(bigg_mode, hidden_state)
    if getattr(pipeline, "text_encoder", None) is not None:
        if long_clip is not None:
            _swap_text_encoder(pipeline, long_clip, keep)
        length = num_positions(pipeline.text_encoder)
        if length <= 77:
            raise ValueError(
                f"`text_encoder` reads {length} positions; pass `long_clip` (a Long-CLIP-L checkpoint or 'stretch')."
            )
    else:
        if long_clip is not None and not (isinstance(long_clip, str) and long_clip == STRETCH):
            logger.info("The pipeline has no CLIP-L `text_encoder` (an SDXL refiner); only bigG is changed.")
        length = CONTEXT_LENGTH
    bigg_mode = _prepare_bigg(pipeline, bigg, length, keep)
    _set_config(pipeline, long_clip_bigg_mode=bigg_mode, long_clip_hidden_state=hidden_state)
    if not isinstance(pipeline, LongCLIPStableDiffusionXLPipeline):
        pipeline.encode_prompt = types.MethodType(encode_prompt, pipeline)
    return pipeline


class LongCLIPStableDiffusionXLPipeline(StableDiffusionXLPipeline):
    r"""
    Stable Diffusion XL with Long-CLIP: both text encoders read prompts of up to 248 tokens.

    A [`~diffusers.StableDiffusionXLPipeline`] subclass: same components, same `__call__` (callbacks including
    `add_text_embeds`/`add_time_ids`), LoRA / textual inversion / IP-Adapter / single-file mixins. Only
    `encode_prompt` and `from_pretrained` change. See the module documentation for the bigG modes.

    Args:
        long_clip_pad_token_id (`int`, defaults to 0):
            Id padding prompts after end-of-text on the CLIP-L side: 0 for fine-tuned Long-CLIP encoders (as
            trained), 49407 for SDXL's own CLIP-L stretched with `long_clip="stretch"`. bigG always pads with 0.
        long_clip_bigg_mode (`str`, defaults to `"stretch"`):
            How bigG reads 248 tokens: `"stretch"` (KPS), `"windows"` (77-token windows), `"supplied"` (a long bigG).
        long_clip_hidden_state (`str`, defaults to `"penultimate"`):
            `"penultimate"` (SDXL's convention, no final norm) or `"final_norm"` (the reference Long-CLIP recipe).
        Other arguments: see [`~diffusers.StableDiffusionXLPipeline`].
    """

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        long_clip_pad_token_id: int = 0,
        long_clip_bigg_mode: str = STRETCH,
        long_clip_hidden_state: str = "penultimate",
    ):
        _check_options(long_clip_bigg_mode, long_clip_hidden_state)
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.register_to_config(
            long_clip_pad_token_id=long_clip_pad_token_id,
            long_clip_bigg_mode=long_clip_bigg_mode,
            long_clip_hidden_state=long_clip_hidden_state,
        )

    encode_prompt = encode_prompt

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str,
        long_clip: Any = None,
        bigg: Any = None,
        hidden_state: str | None = None,
        keep: int = 20,
        **kwargs,
    ) -> LongCLIPStableDiffusionXLPipeline:
        r"""
        Load an SDXL base and make both encoders read 248 tokens.

        Args:
            pretrained_model_name_or_path: a diffusers SDXL folder or Hub id (or a saved Long-CLIP SDXL pipeline).
            long_clip: Long-CLIP-L for `text_encoder` — a checkpoint in any format
                [`~longclip_diffusion.checkpoints.load_text_encoder`] reads, a model, `"stretch"` (KPS of SDXL's own
                CLIP-L), or `None` when the folder already holds a long encoder (e.g. saved by this class).
            bigg: `"stretch"` (default for a stock base: KPS, training-free, the reference recipe), `"windows"`
                (77-token windows), or a 248-position bigG checkpoint/model. `None` keeps the saved pipeline's mode.
            hidden_state: `"penultimate"` (default, SDXL's) or `"final_norm"` (the reference recipe). `None` keeps the
                saved pipeline's choice.
            keep: rows kept by the KPS stretch.
            kwargs: passed to [`~diffusers.DiffusionPipeline.from_pretrained`]; `dtype` and `torch_dtype` both work on
                every diffusers version.
        """
        dtype = _dtype_argument(kwargs)
        if long_clip is not None and not (isinstance(long_clip, str) and long_clip == STRETCH):
            text_encoder = load_text_encoder(long_clip, torch_dtype=dtype)
            kwargs.setdefault("text_encoder", text_encoder)
            kwargs.setdefault("tokenizer", load_tokenizer(num_positions(text_encoder)))
            kwargs.setdefault("long_clip_pad_token_id", 0)
            long_clip = None
        if bigg is not None and not (isinstance(bigg, str) and bigg in BIGG_MODES):  # a checkpoint or model
            kwargs.setdefault("text_encoder_2", load_long_bigg(bigg, torch_dtype=dtype))
            bigg = SUPPLIED
        pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return apply_long_clip_xl(pipeline, long_clip, keep=keep, bigg=bigg, hidden_state=hidden_state)
