"""`LongCLIPStableDiffusionPipeline`: Stable Diffusion 1.x reading prompts of up to 248 tokens.

Only prompt encoding and loading change; denoising is diffusers' own ``StableDiffusionPipeline.__call__``.

Padding after end-of-text is chosen per model family and stored in the pipeline config as
``long_clip_pad_token_id``: a fine-tuned Long-CLIP encoder was trained with id 0 padding (the reference
``longclip.tokenize``); SD 1.x's own CLIP stretched on the fly keeps SD's end-of-text padding (id 49407), which is what
the UNet saw in training. Every prompt is padded to all 248 positions, so a batch gives each prompt the embedding it
gets alone.
"""

from __future__ import annotations

import types
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers
from packaging.version import Version

from ..checkpoints import load_text_encoder
from ..positions import stretch_text_encoder
from ..prompts import encode_prompts, num_positions
from ..tokenizer import END_OF_TEXT, load_tokenizer

STRETCH = "stretch"
# diffusers 0.40 takes `dtype` in from_pretrained and deprecates `torch_dtype`; older releases take only `torch_dtype`.
DTYPE_ARGUMENT = "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"


def _dtype_argument(kwargs: dict[str, Any]) -> torch.dtype | None:
    """The dtype asked for as ``dtype`` or ``torch_dtype``, left in ``kwargs`` under the name the installed diffusers
    reads, so either spelling works on any version without a deprecation warning."""
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    if dtype is not None:
        kwargs[DTYPE_ARGUMENT] = dtype
    return dtype

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline

        >>> pipe = LongCLIPStableDiffusionPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5", long_clip="BeichenZhang/LongCLIP-L", torch_dtype=torch.float16
        ... ).to("cuda")
        >>> prompt = "A cosy reading nook by a rain-streaked window, ... (up to 248 tokens of detail)"
        >>> image = pipe(prompt, negative_prompt="blurry, lowres").images[0]
        ```
"""


def _pad_token_id(pipeline: DiffusionPipeline) -> int:
    """Our pipelines keep it in their config; a stock pipeline given Long-CLIP by `apply_long_clip`, as an attribute."""
    pad_token_id = getattr(pipeline, "_long_clip_pad_token_id", None)
    return pad_token_id if pad_token_id is not None else getattr(pipeline.config, "long_clip_pad_token_id", 0)


def _normalize_negative(prompt: str | list[str] | None, negative_prompt, batch_size: int) -> list[str]:
    if negative_prompt is None:
        return [""] * batch_size
    if prompt is not None and type(prompt) is not type(negative_prompt):
        raise TypeError(
            f"`negative_prompt` should be the same type as `prompt`, but got {type(negative_prompt)} != {type(prompt)}."
        )
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch_size
    if len(negative_prompt) != batch_size:
        raise ValueError(
            f"`negative_prompt` has batch size {len(negative_prompt)}, but `prompt` has batch size {batch_size}. "
            "Pass one negative prompt per prompt."
        )
    return list(negative_prompt)


def _repeat_per_image(embeds: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    return embeds.repeat_interleave(num_images_per_prompt, dim=0)


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
    """
    if lora_scale is not None and isinstance(self, StableDiffusionLoraLoaderMixin):
        self._lora_scale = lora_scale
        if USE_PEFT_BACKEND:
            scale_lora_layers(self.text_encoder, lora_scale)

    if prompt is not None:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch_size = len(prompts)
    else:
        batch_size = prompt_embeds.shape[0]

    def encode(texts: list[str]) -> torch.Tensor:
        if isinstance(self, TextualInversionLoaderMixin):
            texts = self.maybe_convert_prompt(texts, self.tokenizer)
        return encode_prompts(
            self.text_encoder,
            self.tokenizer,
            texts,
            pad_token_id=_pad_token_id(self),
            clip_skip=clip_skip,
            hidden_state="final_norm",
            device=device,
        ).hidden_states

    if prompt_embeds is None:
        prompt_embeds = encode(prompts)
    if do_classifier_free_guidance and negative_prompt_embeds is None:
        negative_prompt_embeds = encode(_normalize_negative(prompt, negative_prompt, batch_size))

    if self.text_encoder is not None:
        dtype = self.text_encoder.dtype
    elif self.unet is not None:
        dtype = self.unet.dtype
    else:
        dtype = prompt_embeds.dtype

    prompt_embeds = _repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    if do_classifier_free_guidance:
        negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
        negative_prompt_embeds = _repeat_per_image(negative_prompt_embeds, num_images_per_prompt)

    if self.text_encoder is not None and isinstance(self, StableDiffusionLoraLoaderMixin) and USE_PEFT_BACKEND:
        unscale_lora_layers(self.text_encoder, lora_scale)

    return prompt_embeds, negative_prompt_embeds


class LongCLIPStableDiffusionPipeline(StableDiffusionPipeline):
    r"""
    Stable Diffusion 1.x with a Long-CLIP text encoder: prompts of up to 248 tokens, read in one pass.

    A [`~diffusers.StableDiffusionPipeline`] subclass: same components, same `__call__`, LoRA / textual inversion /
    IP-Adapter mixins. Only `encode_prompt` and `from_pretrained` change.

    Args:
        long_clip_pad_token_id (`int`, defaults to 0):
            Id padding prompts after end-of-text: 0 for fine-tuned Long-CLIP encoders (as trained), 49407
            (end-of-text) for SD's own encoder stretched with `long_clip="stretch"`.
        Other arguments: see [`~diffusers.StableDiffusionPipeline`].
    """

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        safety_checker,
        feature_extractor,
        image_encoder=None,
        requires_safety_checker: bool = True,
        long_clip_pad_token_id: int = 0,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self.register_to_config(long_clip_pad_token_id=long_clip_pad_token_id)

    encode_prompt = encode_prompt

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
                Hub id, or a model); or `"stretch"` to stretch the base's own encoder with KPS (training-free).
            keep: rows kept by the KPS stretch (only with `"stretch"`).
            kwargs: passed to [`~diffusers.DiffusionPipeline.from_pretrained`]; `dtype` and `torch_dtype` both work on
                every diffusers version.
        """
        dtype = _dtype_argument(kwargs)
        if long_clip is None:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if isinstance(long_clip, str) and long_clip == STRETCH:
            pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
            return apply_long_clip(pipeline, STRETCH, keep=keep)
        text_encoder = load_text_encoder(long_clip, torch_dtype=dtype)
        kwargs.setdefault("tokenizer", load_tokenizer(num_positions(text_encoder)))
        kwargs.setdefault("long_clip_pad_token_id", 0)
        return super().from_pretrained(pretrained_model_name_or_path, text_encoder=text_encoder, **kwargs)


def apply_long_clip(
    pipeline: DiffusionPipeline, long_clip: Any, keep: int = 20, *, bigg: Any = None, hidden_state: str | None = None
) -> DiffusionPipeline:
    """Swap Long-CLIP into an existing SD 1.x pipeline of any kind (img2img, inpaint, ControlNet, …), in place.

    ``long_clip`` is a checkpoint (any format), a text-encoder model, or ``"stretch"`` to stretch the pipeline's own
    encoder. The old encoder is released, never kept beside the new one. The pipeline's tokenizer (with any
    textual-inversion tokens) is kept and reads 248 tokens; its ``encode_prompt`` becomes Long-CLIP's.

    An SDXL pipeline (one with ``text_encoder_2``: base, img2img, inpaint, ControlNet, refiner) goes to
    :func:`~longclip_diffusion.pipelines.stable_diffusion_xl.apply_long_clip_xl`, which also takes ``bigg``
    (``"stretch"``, ``"windows"`` or a long bigG checkpoint) and ``hidden_state`` (``"penultimate"``/``"final_norm"``).
    """
    if hasattr(pipeline, "text_encoder_2"):
        from .stable_diffusion_xl import apply_long_clip_xl

        return apply_long_clip_xl(pipeline, long_clip, keep=keep, bigg=bigg, hidden_state=hidden_state)
    if bigg is not None or hidden_state is not None:
        raise ValueError("`bigg` and `hidden_state` apply to SDXL pipelines only; SD 1.x has one encoder.")
    if isinstance(long_clip, str) and long_clip == STRETCH:
        stretch_text_encoder(pipeline.text_encoder, keep=keep)
        pad_token_id = END_OF_TEXT
    else:
        old = pipeline.text_encoder
        with_projection = type(old).__name__.endswith("WithProjection")
        device, dtype = old.device, old.dtype
        pipeline.text_encoder = old = None  # release the old encoder before the new one is read
        new = load_text_encoder(long_clip, with_projection=with_projection)
        pipeline.text_encoder = new.to(device=device, dtype=dtype)
        pad_token_id = 0
    pipeline.tokenizer.model_max_length = num_positions(pipeline.text_encoder)
    if isinstance(pipeline, LongCLIPStableDiffusionPipeline):
        pipeline.register_to_config(long_clip_pad_token_id=pad_token_id)
    else:  # a stock pipeline's config must keep its own keys (diffusers checks them against __init__)
        pipeline._long_clip_pad_token_id = pad_token_id
        pipeline.encode_prompt = types.MethodType(encode_prompt, pipeline)
    return pipeline
