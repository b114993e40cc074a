"""`LongCLIPStableDiffusionPipeline`: Stable Diffusion 1.x reading prompts of up to 248 tokens.

Only prompt encoding and loading change; denoising is diffusers' own ``StableDiffusionPipeline.__call__`` (after the
argument checks of :func:`~longclip_diffusion.pipelines.core.checked_call`). What the families share — settings,
transactional swaps, checks, the ``apply_long_clip`` dispatcher — is in :mod:`.core`.

Padding after end-of-text is chosen per model and stored in the pipeline config as ``long_clip_pad_token_id``: a
fine-tuned Long-CLIP encoder was trained with id 0 padding (the reference ``longclip.tokenize``); SD 1.x's own CLIP
stretched on the fly keeps SD's end-of-text padding (id 49407), which is what the UNet saw in training. The pipeline's
tokenizer is set to pad the same way, so a saved pipeline read by stock diffusers gives the same embeddings. Every
prompt is padded to all 248 positions, so a batch gives each prompt the embedding it gets alone.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from ..checkpoints import check_text_encoder_width
from ..prompts import encode_prompts, num_positions
from ..tokenizer import END_OF_TEXT, load_tokenizer
from .core import (
    Family,
    Mode,
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

PAD_TOKEN_ID = "long_clip_pad_token_id"


def _unet_width(pipeline: DiffusionPipeline) -> int | None:
    unet = getattr(pipeline, "unet", None)
    return unet.config.cross_attention_dim if unet is not None else None


def _embedding_width(pipeline: DiffusionPipeline) -> int | None:
    width = _unet_width(pipeline)
    if width is None and pipeline.text_encoder is not None:
        width = pipeline.text_encoder.config.hidden_size
    return width


def _encode_texts(pipeline: DiffusionPipeline, prompts: list[str], clip_skip: int | None, device) -> torch.Tensor:
    tokenizer = text_tokenizer(pipeline)
    if isinstance(pipeline, TextualInversionLoaderMixin):
        prompts = pipeline.maybe_convert_prompt(prompts, tokenizer)
    encoding = encode_prompts(
        pipeline.text_encoder,
        tokenizer,
        prompts,
        pad_token_id=get_setting(pipeline, PAD_TOKEN_ID, 0),
        clip_skip=clip_skip,
        hidden_state="final_norm",
        device=device,
    )
    return encoding.hidden_states


def encode_prompt(
    self,
    prompt: str | list[str] | None,
    device: torch.device,
    num_images_per_prompt: int,
    do_classifier_free_guidance: bool,
    negative_prompt: str | list[str] | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    lora_scale: float | None = None,
    clip_skip: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""
    Encodes the prompt into text encoder hidden states, reading up to 248 tokens in one pass.

    Same signature and semantics as [`~StableDiffusionPipeline.encode_prompt`], plus A1111 prompt weighting
    (`(words:1.3)`, `(words)`, `[words]`). Tokens past the encoder's length are dropped with a warning naming them.
    Bad arguments (an empty prompt list, embeddings of the wrong shape, NaN/Inf embeddings) raise a `ValueError`.
    """
    # Adapted from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.encode_prompt
    prompts = prompt_list(prompt, prompt_embeds)
    batch_size = len(prompts) if prompts is not None else prompt_embeds.shape[0]
    check_images_per_prompt(num_images_per_prompt)
    width = _embedding_width(self)
    check_prompt_embeds(prompt_embeds, "prompt_embeds", width)
    check_prompt_embeds(negative_prompt_embeds, "negative_prompt_embeds", width)

    with scaled_lora(self, lora_scale, StableDiffusionLoraLoaderMixin, [self.text_encoder]):
        if prompt_embeds is None:
            prompt_embeds = _encode_texts(self, prompts, clip_skip, device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = negative_prompts(prompt, negative_prompt, batch_size)
            negative_prompt_embeds = _encode_texts(self, negatives, clip_skip, device)

    if self.text_encoder is not None:
        dtype = self.text_encoder.dtype
    elif self.unet is not None:
        dtype = self.unet.dtype
    else:
        dtype = prompt_embeds.dtype

    check_same_shape(prompt_embeds, negative_prompt_embeds if do_classifier_free_guidance else None, "prompt_embeds")
    check_finite(prompt_embeds, "prompt_embeds")
    prompt_embeds = repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    if do_classifier_free_guidance:
        check_finite(negative_prompt_embeds, "negative_prompt_embeds")
        negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
        negative_prompt_embeds = repeat_per_image(negative_prompt_embeds, num_images_per_prompt)
    return prompt_embeds, negative_prompt_embeds


def _check_width(pipeline: DiffusionPipeline) -> None:
    width = _unet_width(pipeline)
    if width is not None and pipeline.text_encoder is not None:
        check_text_encoder_width(pipeline.text_encoder, width, where=f"`text_encoder` of {type(pipeline).__name__}")


class LongCLIPStableDiffusionPipeline(StableDiffusionPipeline):
    r"""
    Stable Diffusion 1.x with a Long-CLIP text encoder: prompts of up to 248 tokens, read in one pass.

    A [`~diffusers.StableDiffusionPipeline`] subclass: same components, same `__call__`, LoRA / textual inversion /
    IP-Adapter mixins. Only `encode_prompt` and `from_pretrained` change, and `__call__` checks its arguments first.
    A text encoder whose width differs from the UNet's `cross_attention_dim` is refused.

    Args:
        long_clip_pad_token_id (`int`, defaults to 0):
            Id padding prompts after end-of-text: 0 for fine-tuned Long-CLIP encoders (as trained), 49407
            (end-of-text) for SD's own encoder stretched with `long_clip="stretch"`. The tokenizer is set to pad the
            same way.
        Other arguments: see [`~diffusers.StableDiffusionPipeline`].

    Examples:
        ```py
        >>> import torch
        >>> from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline

        >>> pipe = LongCLIPStableDiffusionPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5", long_clip="BeichenZhang/LongCLIP-L", dtype=torch.float16
        ... ).to("cuda")
        >>> prompt = "A cosy reading nook by a rain-streaked window, ... (up to 248 tokens of detail)"
        >>> image = pipe(prompt, negative_prompt="blurry, lowres").images[0]
        ```
    """

    # Signature adapted from diffusers.StableDiffusionPipeline.__init__ (from_pipe matches components by these types)
    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker,
        feature_extractor: CLIPImageProcessor,
        image_encoder: CLIPVisionModelWithProjection = None,
        requires_safety_checker: bool = True,
        long_clip_pad_token_id: int = 0,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer_for(tokenizer, long_clip_pad_token_id),
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        _check_width(self)
        self.register_to_config(long_clip_pad_token_id=long_clip_pad_token_id)

    encode_prompt = encode_prompt
    __call__ = checked_call(StableDiffusionPipeline.__call__)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, long_clip: Any = None, keep: int = 20, **kwargs
    ) -> LongCLIPStableDiffusionPipeline:
        r"""
        Load a Stable Diffusion 1.x base and put a Long-CLIP encoder in it.

        Args:
            pretrained_model_name_or_path: a diffusers SD 1.x folder or Hub id (or a saved Long-CLIP pipeline).
            long_clip: `None` (the folder already holds a long encoder, e.g. one saved by this class); a Long-CLIP
                checkpoint in any format [`~longclip_diffusion.checkpoints.load_text_encoder`] reads (file, folder,
                Hub id, or a model); or `"stretch"` to stretch the base's own encoder with KPS (training-free; refused
                for an encoder that is already long).
            keep: rows kept by the KPS stretch (only with `"stretch"`).
            kwargs: passed to [`~diffusers.DiffusionPipeline.from_pretrained`]; `dtype` and `torch_dtype` both work on
                every diffusers version.
        """
        dtype = dtype_argument(kwargs)
        if long_clip is None:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if is_mode(long_clip, Mode.STRETCH):
            pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
            return apply_long_clip_sd(pipeline, Mode.STRETCH, keep=keep)
        text_encoder = load_encoder(long_clip, where=str(long_clip), expected_width=None, dtype=dtype)
        kwargs.setdefault("tokenizer", load_tokenizer(num_positions(text_encoder)))
        kwargs.setdefault("long_clip_pad_token_id", 0)
        return super().from_pretrained(pretrained_model_name_or_path, text_encoder=text_encoder, **kwargs)


def apply_long_clip_sd(pipeline: DiffusionPipeline, long_clip: Any, keep: int = 20) -> DiffusionPipeline:
    """Swap Long-CLIP into an existing SD 1.x pipeline of any kind (img2img, inpaint, ControlNet, …), in place.

    ``long_clip`` is a checkpoint (any format), a text-encoder model, or ``"stretch"`` to stretch the pipeline's own
    encoder (refused when it is already long). The new encoder is read and checked against the UNet's width before the
    old one is released (see :mod:`.core`). The pipeline's tokenizer (with any textual-inversion tokens) is kept, as a
    copy that reads 248 tokens and pads as the encoder expects (another pipeline sharing it reads as before); its
    ``encode_prompt`` becomes Long-CLIP's. ``"stretch"`` changes the encoder itself, also for pipelines that share it.
    """
    if is_mode(long_clip, Mode.STRETCH):
        stretch_encoder(pipeline, "text_encoder", keep)
        pad_token_id = END_OF_TEXT
    else:
        with_projection = type(pipeline.text_encoder).__name__.endswith("WithProjection")
        where = f"`text_encoder` of {type(pipeline).__name__} ({long_clip if isinstance(long_clip, str) else 'model'})"
        encoder = load_encoder(long_clip, where=where, expected_width=_unet_width(pipeline), with_projection=with_projection)
        put_encoder(pipeline, "text_encoder", encoder)
        pad_token_id = 0
    pipeline.register_modules(tokenizer=tokenizer_for(pipeline.tokenizer, pad_token_id, num_positions(pipeline.text_encoder)))
    set_settings(pipeline, **{PAD_TOKEN_ID: pad_token_id})
    install_encode_prompt(pipeline, encode_prompt, LongCLIPStableDiffusionPipeline)
    return pipeline


def _is_sd(pipeline: DiffusionPipeline) -> bool:
    return hasattr(pipeline, "unet") and hasattr(pipeline, "text_encoder") and not hasattr(pipeline, "text_encoder_2")


register_family(Family("SD 1.x", _is_sd, apply_long_clip_sd))
