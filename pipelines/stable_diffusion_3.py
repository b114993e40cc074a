"""`LongCLIPStableDiffusion3Pipeline`: SD3 with both CLIP encoders reading prompts of up to 248 tokens.

SD3's transformer attends to one joint sequence: the two CLIP encoders' hidden states side by side on the width axis
(CLIP-L ⊕ OpenCLIP-bigG, zero-padded to T5's width), followed by T5's states. Its pooled vector is both CLIPs'
*projected* end-of-text features, concatenated. Here:

* ``text_encoder`` becomes Long-CLIP-L with its text projection (248 positions), or SD3's own CLIP-L stretched with
  KPS (``long_clip="stretch"``);
* ``text_encoder_2`` (bigG) reads the same 248 positions in one of three modes, stored as ``long_clip_bigg_mode``, as
  in the SDXL pipeline: ``"stretch"`` (default: KPS, training-free), ``"windows"`` (bigG keeps 77 positions and reads
  75-token windows laid onto the 248 positions; its pooled vector covers the first window) or ``"supplied"`` (a
  248-position bigG checkpoint);
* so the CLIP part of the joint sequence is 248 positions long (then T5's ``max_sequence_length``, 256 by default);
* hidden states and ``clip_skip`` as diffusers' SD3 pipeline: the penultimate layer without final norm, ``clip_skip``
  = k going k layers further back, for the prompt only (diffusers encodes the negative prompt without it);
* T5 is unchanged.

Tokenization: both CLIPs read the prompt with the pipeline's Long-CLIP tokenizer (``tokenizer``; bigG shares CLIP's
vocabulary). SD3's ``tokenizer_2`` is not used for text: its pad token ``"!"`` would turn a literal "!" into padding.
Padding after end-of-text: CLIP-L with ``long_clip_pad_token_id`` (0 for a fine-tuned Long-CLIP, as trained; 49407
for SD3's own CLIP-L stretched, as SD3 pads it), bigG with 0, as SD3 pads it. The joint sequence includes the padded
positions, so the pad id matters here (unlike Flux).

Weighting syntax (``(words:1.3)``, ``(words)``, ``[words]``) is parsed out of every encoder's text: CLIP hidden states
are weighted around the empty prompt (pooled vectors are not, as in ComfyUI); T5 as ComfyUI core weights T5
(:func:`~longclip_diffusion.prompts.encode_t5_prompts`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.loaders import SD3LoraLoaderMixin
from diffusers.utils.torch_utils import get_module_execution_device
from transformers import (
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    SiglipImageProcessor,
    SiglipVisionModel,
    T5EncoderModel,
    T5TokenizerFast,
)

from ..checkpoints import text_encoder_width
from ..positions import CLIP_POSITIONS
from ..prompts import encode_prompts, encode_t5_prompts, encode_windows, num_positions
from ..tokenizer import END_OF_TEXT, load_tokenizer
from .core import (
    Family,
    Mode,
    batch_of,
    check_finite,
    check_images_per_prompt,
    check_prompt_embeds,
    check_stretchable,
    checked_call,
    dtype_argument,
    get_setting,
    install_encode_prompt,
    is_mode,
    load_encoder,
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

PAD_TOKEN_ID = "long_clip_pad_token_id"
BIGG_MODE = "long_clip_bigg_mode"
BIGG_MODES = tuple(str(mode) for mode in Mode)
BIGG_PAD_TOKEN_ID = 0


def _encode_texts(
    pipeline: DiffusionPipeline,
    prompts: list[str],
    prompts_2: list[str],
    prompts_3: list[str],
    clip_skip: int | None,
    max_sequence_length: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The joint sequence ``[B, 248 + max_sequence_length, T5 width]`` and pooled ``[B, proj_L + proj_G]``."""
    text_encoder, text_encoder_2 = pipeline.text_encoder, pipeline.text_encoder_2
    if text_encoder is None or text_encoder_2 is None:
        raise ValueError("An SD3 pipeline needs both CLIP encoders (`text_encoder`, `text_encoder_2`) to read prompts.")
    length = num_positions(text_encoder)
    tokenizer = text_tokenizer(pipeline)
    options = {"clip_skip": clip_skip, "hidden_state": "penultimate"}
    encoding_l = encode_prompts(
        text_encoder,
        tokenizer,
        prompts,
        pad_token_id=get_setting(pipeline, PAD_TOKEN_ID, 0),
        device=get_module_execution_device(text_encoder),
        **options,
    )
    options.update(pad_token_id=BIGG_PAD_TOKEN_ID, device=get_module_execution_device(text_encoder_2))
    if get_setting(pipeline, BIGG_MODE, Mode.STRETCH) == Mode.WINDOWS:
        encoding_g = encode_windows(text_encoder_2, tokenizer, prompts_2, length=length, **options)
    elif num_positions(text_encoder_2) != length:
        raise ValueError(
            f"`text_encoder_2` (bigG) reads {num_positions(text_encoder_2)} positions but `text_encoder` reads "
            f"{length}; use apply_long_clip(pipeline, ..., bigg='stretch'), bigg='windows', or a {length}-position bigG."
        )
    else:
        encoding_g = encode_prompts(text_encoder_2, tokenizer, prompts_2, **options)

    dtype = text_encoder.dtype
    clip_states = torch.cat(
        [encoding_l.hidden_states.to(dtype=dtype, device=device), encoding_g.hidden_states.to(dtype=dtype, device=device)],
        dim=-1,
    )
    pooled = torch.cat([encoding_l.pooled.to(device), encoding_g.pooled.to(device)], dim=-1)

    if pipeline.text_encoder_3 is None:  # SD3 without T5: zeros, as diffusers
        width = pipeline.transformer.config.joint_attention_dim
        t5_states = torch.zeros((len(prompts_3), max_sequence_length, width), device=device, dtype=dtype)
    else:
        t5_states = encode_t5_prompts(
            pipeline.text_encoder_3,
            pipeline.tokenizer_3,
            prompts_3,
            max_sequence_length=max_sequence_length,
            device=get_module_execution_device(pipeline.text_encoder_3),
        )
        t5_states = t5_states.to(dtype=pipeline.text_encoder_3.dtype, device=device)
    width = t5_states.shape[-1]
    if clip_states.shape[-1] > width:
        raise ValueError(
            f"The CLIP encoders give {clip_states.shape[-1]} channels together, more than T5's {width}: the joint "
            "sequence would cut them. Check that `text_encoder`, `text_encoder_2` and `text_encoder_3` belong together."
        )
    clip_states = F.pad(clip_states, (0, width - clip_states.shape[-1]))
    return torch.cat([clip_states, t5_states], dim=-2), pooled


def encode_prompt(
    self,
    prompt: str | list[str],
    prompt_2: str | list[str],
    prompt_3: str | list[str],
    device: torch.device | None = None,
    num_images_per_prompt: int = 1,
    do_classifier_free_guidance: bool = True,
    negative_prompt: str | list[str] | None = None,
    negative_prompt_2: str | list[str] | None = None,
    negative_prompt_3: str | list[str] | None = None,
    prompt_embeds: torch.FloatTensor | None = None,
    negative_prompt_embeds: torch.FloatTensor | None = None,
    pooled_prompt_embeds: torch.FloatTensor | None = None,
    negative_pooled_prompt_embeds: torch.FloatTensor | None = None,
    clip_skip: int | None = None,
    max_sequence_length: int = 256,
    lora_scale: float | None = None,
):
    r"""
    Encodes the prompt into SD3's joint sequence and pooled vector, both CLIP encoders reading up to 248 tokens.

    Same signature and return value as [`~StableDiffusion3Pipeline.encode_prompt`]: `(prompt_embeds,
    negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)`; `prompt_2` goes to bigG,
    `prompt_3` to T5 (each defaults to `prompt`). Weighting syntax is parsed out of all three encoders' text.
    Embeddings passed in are returned as they are, as in diffusers.
    """
    device = device or self._execution_device
    prompts = prompt_list(prompt, prompt_embeds)
    batch_size = len(prompts) if prompts is not None else prompt_embeds.shape[0]
    check_images_per_prompt(num_images_per_prompt)
    config = self.transformer.config if self.transformer is not None else None
    width, pooled_width = (config.joint_attention_dim, config.pooled_projection_dim) if config else (None, None)
    check_prompt_embeds(prompt_embeds, "prompt_embeds", width)
    check_prompt_embeds(negative_prompt_embeds, "negative_prompt_embeds", width)
    check_prompt_embeds(pooled_prompt_embeds, "pooled_prompt_embeds", pooled_width, rank=2)
    check_prompt_embeds(negative_pooled_prompt_embeds, "negative_pooled_prompt_embeds", pooled_width, rank=2)

    with scaled_lora(self, lora_scale, SD3LoraLoaderMixin, [self.text_encoder, self.text_encoder_2]):
        if prompt_embeds is None:
            prompts_2 = batch_of(prompt_2 or None, batch_size, "prompt_2", prompts)  # "" → `prompt`, as diffusers
            prompts_3 = batch_of(prompt_3 or None, batch_size, "prompt_3", prompts)
            prompt_embeds, pooled_prompt_embeds = _encode_texts(
                self, prompts, prompts_2, prompts_3, clip_skip, max_sequence_length, device
            )
            prompt_embeds = repeat_per_image(prompt_embeds, num_images_per_prompt)
            pooled_prompt_embeds = repeat_per_image(pooled_prompt_embeds, num_images_per_prompt)

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            # As diffusers: "" by default, bigG and T5 read the first negative prompt unless given their own, and the
            # negative prompt is encoded without `clip_skip`.
            negatives = batch_of(negative_prompt, batch_size, "negative_prompt", [""] * batch_size)
            negatives_2 = batch_of(negative_prompt_2 or None, batch_size, "negative_prompt_2", negatives)
            negatives_3 = batch_of(negative_prompt_3 or None, batch_size, "negative_prompt_3", negatives)
            negative_prompt_embeds, negative_pooled_prompt_embeds = _encode_texts(
                self, negatives, negatives_2, negatives_3, None, max_sequence_length, device
            )
            negative_prompt_embeds = repeat_per_image(negative_prompt_embeds, num_images_per_prompt)
            negative_pooled_prompt_embeds = repeat_per_image(negative_pooled_prompt_embeds, num_images_per_prompt)

    check_finite(prompt_embeds, "prompt_embeds")
    check_finite(pooled_prompt_embeds, "pooled_prompt_embeds")
    check_finite(negative_prompt_embeds, "negative_prompt_embeds")
    check_finite(negative_pooled_prompt_embeds, "negative_pooled_prompt_embeds")
    return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds


def _load_bigg(source: Any, expected_width: int | None = None, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A user-supplied 248-position bigG (file, folder, Hub id or model), read and checked before any swap."""
    where = f"`text_encoder_2` (bigG) ({source if isinstance(source, str) else 'model'})"
    return load_encoder(
        source, where=where, expected_width=expected_width, with_projection=True, dtype=dtype
    )


def apply_long_clip_sd3(pipeline: DiffusionPipeline, long_clip: Any = None, keep: int = 20, bigg: Any = None) -> DiffusionPipeline:
    """Make an existing SD3 pipeline of any kind (text-to-image, img2img, inpaint, ControlNet) read 248 tokens with
    both CLIP encoders, in place.

    ``long_clip``: Long-CLIP-L for ``text_encoder`` (any checkpoint format or model, read with its projection), or
    ``"stretch"`` to stretch SD3's own CLIP-L (KPS; refused when it is already long); ``None`` leaves an already long
    one. ``bigg``: ``"stretch"``, ``"windows"``, or a 248-position bigG checkpoint/model; ``None`` keeps the configured
    mode (default ``"stretch"``). All new encoders are read and checked (width) before anything in the pipeline
    changes, so a failed call leaves it as it was (see :mod:`.core`). ``encode_prompt`` becomes Long-CLIP's; T5 is
    untouched.
    """
    bigg = bigg if bigg is not None else get_setting(pipeline, BIGG_MODE, Mode.STRETCH)
    if isinstance(bigg, str) and bigg not in BIGG_MODES:
        raise ValueError(f"`bigg` must be one of {list(BIGG_MODES)} or a bigG checkpoint/model; got {bigg!r}.")
    if long_clip is None and num_positions(pipeline.text_encoder) <= CLIP_POSITIONS:
        raise ValueError(
            f"`text_encoder` of {type(pipeline).__name__} reads {num_positions(pipeline.text_encoder)} positions; pass "
            "`long_clip` (a Long-CLIP-L checkpoint, or 'stretch')."
        )
    # 1. Read and check everything new.
    new_l = new_g = None
    if is_mode(long_clip, Mode.STRETCH):
        check_stretchable(pipeline.text_encoder, "text_encoder")
    elif long_clip is not None:
        where = f"`text_encoder` of {type(pipeline).__name__} ({long_clip if isinstance(long_clip, str) else 'model'})"
        expected_width = text_encoder_width(pipeline.text_encoder)
        new_l = load_encoder(long_clip, where=where, expected_width=expected_width, with_projection=True)
    if not isinstance(bigg, str):
        new_g = _load_bigg(bigg, text_encoder_width(pipeline.text_encoder_2))
    # 2. Change the pipeline.
    if is_mode(long_clip, Mode.STRETCH):
        stretch_encoder(pipeline, "text_encoder", keep)
        set_settings(pipeline, **{PAD_TOKEN_ID: END_OF_TEXT})
    elif new_l is not None:
        put_encoder(pipeline, "text_encoder", new_l)
        set_settings(pipeline, **{PAD_TOKEN_ID: 0})
    length = num_positions(pipeline.text_encoder)
    if new_g is not None:
        put_encoder(pipeline, "text_encoder_2", new_g)
        bigg = Mode.SUPPLIED
    elif is_mode(bigg, Mode.STRETCH) and num_positions(pipeline.text_encoder_2) < length:
        stretch_encoder(pipeline, "text_encoder_2", keep)  # a saved, already stretched bigG stays as it is
    set_settings(pipeline, **{BIGG_MODE: str(bigg)})
    pipeline.register_modules(tokenizer=tokenizer_for(pipeline.tokenizer, get_setting(pipeline, PAD_TOKEN_ID, 0), length))
    pipeline.tokenizer_max_length = length
    install_encode_prompt(pipeline, encode_prompt, LongCLIPStableDiffusion3Pipeline)
    return pipeline


def _check_pooled_width(pipeline: DiffusionPipeline) -> None:
    """The two CLIPs' projections together must be the transformer's pooled width (SD3: 768 + 1280 = 2048)."""
    encoders = (pipeline.text_encoder, pipeline.text_encoder_2)
    if pipeline.transformer is None or any(encoder is None for encoder in encoders):
        return
    widths = [encoder.config.projection_dim for encoder in encoders]
    expected = pipeline.transformer.config.pooled_projection_dim
    if sum(widths) != expected:
        raise ValueError(
            f"{type(pipeline).__name__}: `text_encoder` and `text_encoder_2` project to {widths[0]} + {widths[1]} = "
            f"{sum(widths)} but the transformer reads a pooled vector of {expected}; use a Long-CLIP-L of SD3's own "
            "CLIP-L size (768, projection 768) with its projection."
        )


class LongCLIPStableDiffusion3Pipeline(StableDiffusion3Pipeline):
    r"""
    Stable Diffusion 3 with Long-CLIP: both CLIP encoders read prompts of up to 248 tokens; T5 is unchanged.

    A [`~diffusers.StableDiffusion3Pipeline`] subclass: same components, same `__call__`, LoRA / IP-Adapter /
    single-file mixins. Only `encode_prompt` and `from_pretrained` change. See the module documentation.

    Args:
        long_clip_pad_token_id (`int`, defaults to 0):
            Id padding prompts after end-of-text on the CLIP-L side: 0 for a fine-tuned Long-CLIP (as trained), 49407
            for SD3's own CLIP-L stretched with `long_clip="stretch"`. bigG always pads with 0.
        long_clip_bigg_mode (`str`, defaults to `"stretch"`):
            How bigG reads 248 tokens: `"stretch"` (KPS), `"windows"` (77-token windows), `"supplied"` (a long bigG).
        Other arguments: see [`~diffusers.StableDiffusion3Pipeline`].

    Example:

    ```py
    >>> import torch
    >>> from longclip_diffusion.pipelines import LongCLIPStableDiffusion3Pipeline

    >>> pipe = LongCLIPStableDiffusion3Pipeline.from_pretrained(
    ...     "stabilityai/stable-diffusion-3.5-medium", long_clip="BeichenZhang/LongCLIP-L", torch_dtype=torch.bfloat16
    ... ).to("cuda")
    >>> image = pipe("A lighthouse on a basalt cliff at dusk, ... (up to 248 CLIP tokens)").images[0]
    ```
    """

    # Signature adapted from diffusers.StableDiffusion3Pipeline.__init__ (from_pipe matches components by these types)
    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer_2: CLIPTokenizer,
        text_encoder_3: T5EncoderModel,
        tokenizer_3: T5TokenizerFast,
        image_encoder: SiglipVisionModel = None,
        feature_extractor: SiglipImageProcessor = None,
        long_clip_pad_token_id: int = 0,
        long_clip_bigg_mode: str = "stretch",
    ):
        if long_clip_bigg_mode not in BIGG_MODES:
            raise ValueError(f"`long_clip_bigg_mode` must be one of {list(BIGG_MODES)}; got {long_clip_bigg_mode!r}.")
        super().__init__(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer_for(tokenizer, long_clip_pad_token_id),
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        _check_pooled_width(self)
        self.register_to_config(long_clip_pad_token_id=long_clip_pad_token_id, long_clip_bigg_mode=long_clip_bigg_mode)
        if text_encoder is not None:
            self.tokenizer_max_length = num_positions(text_encoder)

    encode_prompt = encode_prompt
    __call__ = checked_call(StableDiffusion3Pipeline.__call__)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, long_clip: Any = None, bigg: Any = None, keep: int = 20, **kwargs
    ) -> LongCLIPStableDiffusion3Pipeline:
        r"""
        Load an SD3 base and make both CLIP encoders read 248 tokens.

        Args:
            pretrained_model_name_or_path: a diffusers SD3 folder or Hub id (or a saved Long-CLIP SD3 pipeline).
            long_clip: Long-CLIP-L for `text_encoder` — a checkpoint in any format
                [`~longclip_diffusion.checkpoints.load_text_encoder`] reads, a model, `"stretch"` (KPS of SD3's own
                CLIP-L), or `None` when the folder already holds a long encoder (e.g. saved by this class).
            bigg: `"stretch"` (default for a stock base), `"windows"`, or a 248-position bigG checkpoint/model. `None`
                keeps the saved pipeline's mode.
            keep: rows kept by the KPS stretch.
            kwargs: passed to [`~diffusers.DiffusionPipeline.from_pretrained`]; `dtype` and `torch_dtype` both work.
        """
        dtype = dtype_argument(kwargs)
        if long_clip is not None and not is_mode(long_clip, Mode.STRETCH):
            where = str(long_clip) if isinstance(long_clip, str) else "long_clip"
            text_encoder = load_encoder(long_clip, where=where, expected_width=None, with_projection=True, dtype=dtype)
            kwargs.setdefault("text_encoder", text_encoder)
            kwargs.setdefault("tokenizer", load_tokenizer(num_positions(text_encoder)))
            kwargs.setdefault("long_clip_pad_token_id", 0)
            long_clip = None
        if bigg is not None and not (isinstance(bigg, str) and bigg in BIGG_MODES):
            kwargs.setdefault("text_encoder_2", _load_bigg(bigg, dtype=dtype))
            bigg = Mode.SUPPLIED
        pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return apply_long_clip_sd3(pipeline, long_clip, keep=keep, bigg=bigg)


def _is_sd3(pipeline: DiffusionPipeline) -> bool:
    return all(hasattr(pipeline, name) for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"))


register_family(Family("SD3", _is_sd3, apply_long_clip_sd3, options=("bigg",)))
