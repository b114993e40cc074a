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
    that position ``p`` gets the output of the same token (see :func:`~longclip_diffusion.prompts.encode_windows`).
    Weights act per window, as in ComfyUI's clip_g windows mode. Pooled: the first window's projected end-of-text
    feature, as ComfyUI and compel do, so it only sees the first 75 tokens.
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
shapes and a batch gives each prompt the embedding it gets alone. ``tokenizer`` is set to pad as CLIP-L is read and
``tokenizer_2`` to read as many positions as bigG, so a saved pipeline gives the same embeddings in stock diffusers
(``"stretch"``/``"supplied"`` modes; stock diffusers has no windows).

Widths are checked when encoders go in (constructor, ``from_pretrained``, ``apply_long_clip``): CLIP-L + bigG must
make the UNet's ``cross_attention_dim`` (bigG alone for a refiner).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import get_module_execution_device
from torch import nn
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from ..checkpoints import check_text_encoder_width, load_text_encoder
from ..positions import CLIP_POSITIONS
from ..prompts import encode_prompts, encode_windows, num_positions
from ..tokenizer import CONTEXT_LENGTH, END_OF_TEXT, load_tokenizer
from .core import (
    Family,
    Mode,
    batch_of,
    check_finite,
    check_images_per_prompt,
    check_prompt_embeds,
    check_same_shape,
    checked_call,
    dtype_argument,
    get_setting,
    install_encode_prompt,
    is_mode,
    load_encoder,
    negative_prompts,
    prompt_list,
    put_encoder,
    register_family,
    repeat_per_image,
    scaled_lora,
    set_settings,
    stretch_encoder,
    text_tokenizer,
    tokenizer_for,
)

logger = logging.getLogger(__name__)

PAD_TOKEN_ID, BIGG_MODE, HIDDEN_STATE = "long_clip_pad_token_id", "long_clip_bigg_mode", "long_clip_hidden_state"
BIGG_MODES = (Mode.STRETCH, Mode.WINDOWS, Mode.SUPPLIED)
HIDDEN_STATES = ("penultimate", "final_norm")
BIGG_PAD_TOKEN_ID = 0


# --------------------------------------------------------------------------------------------------------------------
# Widths


def _unet_width(pipeline: DiffusionPipeline) -> int | None:
    unet = getattr(pipeline, "unet", None)
    return unet.config.cross_attention_dim if unet is not None else None


def _width(encoder: nn.Module | None) -> int:
    return encoder.config.hidden_size if encoder is not None else 0


def _expected_width(pipeline: DiffusionPipeline, name: str) -> int | None:
    """The width ``pipeline.<name>`` must have: the UNet's ``cross_attention_dim`` less the other encoder's."""
    width = _unet_width(pipeline)
    if width is None:
        return None
    other = "text_encoder_2" if name == "text_encoder" else "text_encoder"
    return width - _width(getattr(pipeline, other, None))


def _check_widths(pipeline: DiffusionPipeline) -> None:
    """CLIP-L blamed first: bigG is the base's own; a wrong Long-CLIP-L is the usual mistake."""
    for name in ("text_encoder", "text_encoder_2"):
        encoder, expected = getattr(pipeline, name, None), _expected_width(pipeline, name)
        if encoder is not None and expected is not None:
            check_text_encoder_width(encoder, expected, where=f"`{name}` of {type(pipeline).__name__}")


def _embedding_width(pipeline: DiffusionPipeline) -> int | None:
    width = _unet_width(pipeline)
    if width is None and pipeline.text_encoder_2 is not None:
        width = _width(pipeline.text_encoder) + _width(pipeline.text_encoder_2)
    return width


# --------------------------------------------------------------------------------------------------------------------
# Encoding


def _encode_texts(
    pipeline: DiffusionPipeline, prompts: list[str], prompts_2: list[str], clip_skip: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both encoders on one batch of prompts: ``([B, 248, 768 + 1280], pooled [B, 1280])`` (bigG only for a refiner)."""
    text_encoder, text_encoder_2 = pipeline.text_encoder, pipeline.text_encoder_2
    if text_encoder_2 is None:
        raise ValueError("An SDXL pipeline needs `text_encoder_2` (bigG): it gives the pooled prompt embedding.")
    tokenizer = text_tokenizer(pipeline)
    mode = get_setting(pipeline, BIGG_MODE, Mode.STRETCH)
    hidden_state = get_setting(pipeline, HIDDEN_STATE, "penultimate")
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
            pad_token_id=get_setting(pipeline, PAD_TOKEN_ID, 0),
            clip_skip=clip_skip,
            hidden_state=hidden_state,
            device=get_module_execution_device(text_encoder),
        )
        parts.append(encoding.hidden_states)

    options = {"clip_skip": clip_skip, "hidden_state": hidden_state, "device": get_module_execution_device(text_encoder_2)}
    if mode == Mode.WINDOWS:
        encoding_2 = encode_windows(text_encoder_2, tokenizer, prompts_2, length=length, pad_token_id=BIGG_PAD_TOKEN_ID, **options)
    else:
        if num_positions(text_encoder_2) != length:
            raise ValueError(
                f"`text_encoder_2` reads {num_positions(text_encoder_2)} positions but {length} are needed "
                f"(mode {mode!r}); use apply_long_clip(pipeline, ..., bigg='stretch'), bigg='windows', or supply a "
                f"{length}-position bigG."
            )
        encoding_2 = encode_prompts(text_encoder_2, tokenizer, prompts_2, pad_token_id=BIGG_PAD_TOKEN_ID, **options)
    parts.append(encoding_2.hidden_states.to(parts[0].device) if parts else encoding_2.hidden_states)
    return torch.cat(parts, dim=-1), encoding_2.pooled


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
    embeddings and pooled embeddings are zeros, as in stock SDXL. Bad arguments raise a `ValueError`.
    """
    # Adapted from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl.StableDiffusionXLPipeline.encode_prompt
    device = device or self._execution_device
    prompts = prompt_list(prompt, prompt_embeds)
    batch_size = len(prompts) if prompts is not None else prompt_embeds.shape[0]
    check_images_per_prompt(num_images_per_prompt)
    width = _embedding_width(self)
    check_prompt_embeds(prompt_embeds, "prompt_embeds", width)
    check_prompt_embeds(negative_prompt_embeds, "negative_prompt_embeds", width)
    check_prompt_embeds(pooled_prompt_embeds, "pooled_prompt_embeds", None, rank=2)
    check_prompt_embeds(negative_pooled_prompt_embeds, "negative_pooled_prompt_embeds", None, rank=2)
    if prompt_embeds is not None and pooled_prompt_embeds is None:
        raise ValueError("`prompt_embeds` came without `pooled_prompt_embeds`; pass both (from `pipe.encode_prompt`).")

    encoders = [self.text_encoder, self.text_encoder_2]
    with scaled_lora(self, lora_scale, StableDiffusionXLLoraLoaderMixin, encoders):
        if prompt_embeds is None:
            prompts_2 = batch_of(prompt_2 or None, batch_size, "prompt_2", prompts)  # "" → `prompt`, as diffusers
            prompt_embeds, pooled = _encode_texts(self, prompts, prompts_2, clip_skip)
            if pooled_prompt_embeds is None:
                pooled_prompt_embeds = pooled

        zero_out_negative_prompt = negative_prompt is None and self.config.force_zeros_for_empty_prompt
        if do_classifier_free_guidance and negative_prompt_embeds is None and zero_out_negative_prompt:
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
        elif do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = negative_prompts(prompt, negative_prompt, batch_size)
            negatives_2 = batch_of(negative_prompt_2 or None, batch_size, "negative_prompt_2", negatives)
            negative_prompt_embeds, negative_pooled = _encode_texts(self, negatives, negatives_2, clip_skip)
            if negative_pooled_prompt_embeds is None:
                negative_pooled_prompt_embeds = negative_pooled

    check_same_shape(prompt_embeds, negative_prompt_embeds if do_classifier_free_guidance else None, "prompt_embeds")
    for name, embeds in (("prompt_embeds", prompt_embeds), ("pooled_prompt_embeds", pooled_prompt_embeds)):
        check_finite(embeds, name)
    dtype = self.text_encoder_2.dtype if self.text_encoder_2 is not None else self.unet.dtype
    prompt_embeds = repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    pooled_prompt_embeds = repeat_per_image(pooled_prompt_embeds.to(device=device), num_images_per_prompt)
    if do_classifier_free_guidance:
        check_finite(negative_prompt_embeds, "negative_prompt_embeds")
        check_finite(negative_pooled_prompt_embeds, "negative_pooled_prompt_embeds")
        negative_prompt_embeds = repeat_per_image(
            negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt
        )
        negative_pooled_prompt_embeds = repeat_per_image(
            negative_pooled_prompt_embeds.to(device=device), num_images_per_prompt
        )
    return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds


# --------------------------------------------------------------------------------------------------------------------
# Loading


def _check_options(bigg_mode: str, hidden_state: str) -> None:
    if bigg_mode not in BIGG_MODES:
        raise ValueError(f"`long_clip_bigg_mode` must be one of {tuple(map(str, BIGG_MODES))}; got {bigg_mode!r}.")
    if hidden_state not in HIDDEN_STATES:
        raise ValueError(f"`hidden_state` must be one of {HIDDEN_STATES}; got {hidden_state!r}.")


def _source_name(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else type(source).__name__


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
    CLIP-L, refused when it is already long; ``None`` leaves it, e.g. already long). A refiner has no CLIP-L;
    ``long_clip`` is then ignored. ``bigg``: ``"stretch"`` (KPS, training-free; a bigG already at 248 positions, e.g.
    shared with a base, is left as it is), ``"windows"`` (77-token windows) or a 248-position bigG checkpoint or model.
    ``hidden_state``: ``"penultimate"`` (SDXL's convention) or ``"final_norm"`` (the reference recipe). ``None`` for
    either keeps the pipeline's configured choice (defaults ``"stretch"``, ``"penultimate"``).

    Transactional: every new encoder is read and checked (width against the UNet, positions) before anything in the
    pipeline changes; then old encoders are released before the new ones move to the device.
    ``encode_prompt`` becomes Long-CLIP's.
    """
    bigg = bigg if bigg is not None else get_setting(pipeline, BIGG_MODE, Mode.STRETCH)
    hidden_state = hidden_state or get_setting(pipeline, HIDDEN_STATE, "penultimate")
    bigg_mode = Mode(bigg) if isinstance(bigg, str) and bigg in BIGG_MODES else Mode.SUPPLIED
    _check_options(bigg_mode, hidden_state)
    has_clip_l = getattr(pipeline, "text_encoder", None) is not None

    # Read and check everything first; the pipeline is not touched until all is well.
    new_clip_l = new_bigg = None
    stretch_clip_l = has_clip_l and is_mode(long_clip, Mode.STRETCH)
    if has_clip_l and long_clip is not None and not stretch_clip_l:
        where = f"`text_encoder` of {type(pipeline).__name__} ({_source_name(long_clip)})"
        new_clip_l = load_encoder(long_clip, where=where, expected_width=_expected_width(pipeline, "text_encoder"))
    elif not has_clip_l and long_clip is not None and not is_mode(long_clip, Mode.STRETCH):
        logger.info("The pipeline has no CLIP-L `text_encoder` (an SDXL refiner); only bigG is changed.")
    if stretch_clip_l:
        length = CONTEXT_LENGTH
    elif new_clip_l is not None:
        length = num_positions(new_clip_l)
    else:
        length = num_positions(pipeline.text_encoder) if has_clip_l else CONTEXT_LENGTH
    if length <= CLIP_POSITIONS:
        raise ValueError(
            f"`text_encoder` reads {length} positions; pass `long_clip` (a Long-CLIP-L checkpoint or 'stretch')."
        )
    if bigg_mode == Mode.SUPPLIED and not is_mode(bigg, Mode.SUPPLIED):
        where = f"`text_encoder_2` of {type(pipeline).__name__} ({_source_name(bigg)})"
        clip_l_width = _width(new_clip_l if new_clip_l is not None else getattr(pipeline, "text_encoder", None))
        unet_width = _unet_width(pipeline)
        expected = unet_width - clip_l_width if unet_width is not None else None
        new_bigg = load_encoder(bigg, where=where, expected_width=expected, with_projection=True)
    bigg_positions = num_positions(new_bigg if new_bigg is not None else pipeline.text_encoder_2)
    if bigg_mode != Mode.WINDOWS and bigg_positions not in (CLIP_POSITIONS, length):
        raise ValueError(
            f"`text_encoder_2` reads {bigg_positions} positions; bigG must read {CLIP_POSITIONS} (to be stretched or "
            f"read in windows) or {length} like `text_encoder`."
        )
    if bigg_mode == Mode.SUPPLIED and bigg_positions != length:
        raise ValueError(f"The supplied bigG reads {bigg_positions} positions; it must read {length} like `text_encoder`.")
    if stretch_clip_l:
        stretch_encoder(pipeline, "text_encoder", keep)  # refused (before any change) if already long

    # Commit.
    if new_clip_l is not None:
        put_encoder(pipeline, "text_encoder", new_clip_l)
    if new_bigg is not None:
        put_encoder(pipeline, "text_encoder_2", new_bigg)
    if bigg_mode == Mode.STRETCH and num_positions(pipeline.text_encoder_2) < length:
        stretch_encoder(pipeline, "text_encoder_2", keep)
    if has_clip_l:
        pad_token_id = END_OF_TEXT if stretch_clip_l else 0 if new_clip_l is not None else get_setting(pipeline, PAD_TOKEN_ID, 0)
        if pipeline.tokenizer is not None:
            length = num_positions(pipeline.text_encoder)
            pipeline.register_modules(tokenizer=tokenizer_for(pipeline.tokenizer, pad_token_id, length))
        set_settings(pipeline, **{PAD_TOKEN_ID: pad_token_id})
    if getattr(pipeline, "tokenizer_2", None) is not None:
        length = num_positions(pipeline.text_encoder_2)
        pipeline.register_modules(tokenizer_2=tokenizer_for(pipeline.tokenizer_2, model_max_length=length))
    set_settings(pipeline, **{BIGG_MODE: str(bigg_mode), HIDDEN_STATE: hidden_state})
    install_encode_prompt(pipeline, encode_prompt, LongCLIPStableDiffusionXLPipeline)
    return pipeline


class LongCLIPStableDiffusionXLPipeline(StableDiffusionXLPipeline):
    r"""
    Stable Diffusion XL with Long-CLIP: both text encoders read prompts of up to 248 tokens.

    A [`~diffusers.StableDiffusionXLPipeline`] subclass: same components, same `__call__` (callbacks including
    `add_text_embeds`/`add_time_ids`), LoRA / textual inversion / IP-Adapter / single-file mixins. Only
    `encode_prompt` and `from_pretrained` change, and `__call__` checks its arguments first. See the module
    documentation for the bigG modes.

    Args:
        long_clip_pad_token_id (`int`, defaults to 0):
            Id padding prompts after end-of-text on the CLIP-L side: 0 for fine-tuned Long-CLIP encoders (as
            trained), 49407 for SDXL's own CLIP-L stretched with `long_clip="stretch"`. bigG always pads with 0.
        long_clip_bigg_mode (`str`, defaults to `"stretch"`):
            How bigG reads 248 tokens: `"stretch"` (KPS), `"windows"` (77-token windows), `"supplied"` (a long bigG).
        long_clip_hidden_state (`str`, defaults to `"penultimate"`):
            `"penultimate"` (SDXL's convention, no final norm) or `"final_norm"` (the reference Long-CLIP recipe).
        Other arguments: see [`~diffusers.StableDiffusionXLPipeline`].

    Examples:
        ```py
        >>> import torch
        >>> from longclip_diffusion.pipelines import LongCLIPStableDiffusionXLPipeline

        >>> pipe = LongCLIPStableDiffusionXLPipeline.from_pretrained(
        ...     "stabilityai/stable-diffusion-xl-base-1.0",
        ...     long_clip="BeichenZhang/LongCLIP-L",  # CLIP-L → Long-CLIP-L
        ...     bigg="stretch",  # or "windows", or a 248-position bigG checkpoint
        ...     dtype=torch.float16,
        ... ).to("cuda")
        >>> image = pipe("A lighthouse on a basalt cliff at dusk, ... (up to 248 tokens)").images[0]
        ```
    """

    # Signature adapted from diffusers.StableDiffusionXLPipeline.__init__ (from_pipe matches components by these types)
    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        image_encoder: CLIPVisionModelWithProjection = None,
        feature_extractor: CLIPImageProcessor = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        long_clip_pad_token_id: int = 0,
        long_clip_bigg_mode: str = Mode.STRETCH,
        long_clip_hidden_state: str = "penultimate",
    ):
        _check_options(long_clip_bigg_mode, long_clip_hidden_state)
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer_for(tokenizer, long_clip_pad_token_id),
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        _check_widths(self)
        self.register_to_config(
            long_clip_pad_token_id=long_clip_pad_token_id,
            long_clip_bigg_mode=str(long_clip_bigg_mode),
            long_clip_hidden_state=long_clip_hidden_state,
        )

    encode_prompt = encode_prompt
    __call__ = checked_call(StableDiffusionXLPipeline.__call__)

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
                CLIP-L; refused when it is already long), or `None` when the folder already holds a long encoder
                (e.g. saved by this class).
            bigg: `"stretch"` (default for a stock base: KPS, training-free, the reference recipe), `"windows"`
                (77-token windows), or a 248-position bigG checkpoint/model. `None` keeps the saved pipeline's mode.
            hidden_state: `"penultimate"` (default, SDXL's) or `"final_norm"` (the reference recipe). `None` keeps the
                saved pipeline's choice.
            keep: rows kept by the KPS stretch.
            kwargs: passed to [`~diffusers.DiffusionPipeline.from_pretrained`]; `dtype` and `torch_dtype` both work on
                every diffusers version.
        """
        dtype = dtype_argument(kwargs)
        if long_clip is not None and not is_mode(long_clip, Mode.STRETCH):
            text_encoder = load_encoder(long_clip, where=_source_name(long_clip), expected_width=None, dtype=dtype)
            kwargs.setdefault("text_encoder", text_encoder)
            kwargs.setdefault("tokenizer", load_tokenizer(num_positions(text_encoder)))
            kwargs.setdefault("long_clip_pad_token_id", 0)
            long_clip = None
        if bigg is not None and not (isinstance(bigg, str) and bigg in BIGG_MODES):  # a checkpoint or model
            kwargs.setdefault("text_encoder_2", load_text_encoder(bigg, with_projection=True, torch_dtype=dtype))
            bigg = Mode.SUPPLIED
        pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return apply_long_clip_xl(pipeline, long_clip, keep=keep, bigg=bigg, hidden_state=hidden_state)


def _is_sdxl(pipeline: DiffusionPipeline) -> bool:
    return hasattr(pipeline, "unet") and hasattr(pipeline, "text_encoder_2")


register_family(Family("SDXL", _is_sdxl, apply_long_clip_xl, options=("bigg", "hidden_state")))
