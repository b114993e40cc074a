"""`LongCLIPFluxPipeline`: Flux with a Long-CLIP-L whose pooled vector reads prompts of up to 248 tokens.

Flux reads its prompt twice: T5 (``text_encoder_2``) gives the token sequence the transformer attends to, and CLIP-L
(``text_encoder``) gives one pooled vector that conditions every block (with the timestep). Stock CLIP-L stops at 77
tokens, so words past that never reach the pooled vector. Here ``text_encoder`` is Long-CLIP-L (or Flux's own CLIP-L
stretched with KPS) and the pooled vector is read from one 248-token pass: CLIP's pooled output, the final-layer-norm
hidden state at the first end-of-text token, not projected (what diffusers takes as ``pooler_output``). Under CLIP's
causal attention that state does not depend on the padding after end-of-text. T5 is unchanged
(``max_sequence_length`` as diffusers, 512 by default).

Weighting syntax (``(words:1.3)``, ``(words)``, ``[words]``) is parsed out of both encoders' text: CLIP reads the
words without brackets (its pooled vector is not weighted, as in ComfyUI, where only hidden states are); T5 reads
them without brackets too and its hidden states are weighted as ComfyUI core weights T5
(:func:`~longclip_diffusion.prompts.encode_t5_prompts`). So in Flux a weight acts through T5 only.

Only prompt encoding and loading change; denoising is diffusers' own ``FluxPipeline.__call__``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.loaders import FluxLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.utils.torch_utils import get_module_execution_device
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
    T5EncoderModel,
    T5TokenizerFast,
)

from ..checkpoints import check_text_encoder_width
from ..positions import CLIP_POSITIONS
from ..prompts import encode_t5_prompts, end_of_text_states, num_positions, tokenize_prompt
from ..tokenizer import load_tokenizer
from .core import (
    Family,
    Mode,
    batch_of,
    check_finite,
    check_images_per_prompt,
    check_prompt_embeds,
    checked_call,
    dtype_argument,
    install_encode_prompt,
    is_mode,
    load_encoder,
    prompt_list,
    put_encoder,
    register_family,
    repeat_per_image,
    scaled_lora,
    stretch_encoder,
    tokenizer_for,
)


def clip_pooled_output(
    text_encoder: torch.nn.Module, tokenizer: CLIPTokenizer, prompts: list[str], device: torch.device | str | None = None
) -> torch.Tensor:
    """CLIP's pooled output (final-layer-norm state at end-of-text, not projected) from one pass of
    ``num_positions(text_encoder)`` tokens, weighting syntax parsed out of the text: ``[batch, width]``.

    Padding after end-of-text cannot change it (causal attention), so prompts are padded with the tokenizer's own pad
    id, as diffusers pads them."""
    device = device or get_module_execution_device(text_encoder)
    length = num_positions(text_encoder)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.stack([tokenize_prompt(tokenizer, prompt, length, pad_token_id).input_ids for prompt in prompts])
    input_ids = input_ids.to(device)
    return end_of_text_states(input_ids, text_encoder(input_ids).last_hidden_state)


def encode_prompt(
    self,
    prompt: str | list[str],
    prompt_2: str | list[str] | None = None,
    device: torch.device | None = None,
    num_images_per_prompt: int = 1,
    prompt_embeds: torch.FloatTensor | None = None,
    pooled_prompt_embeds: torch.FloatTensor | None = None,
    max_sequence_length: int = 512,
    lora_scale: float | None = None,
):
    r"""
    Encodes the prompt: T5 hidden states and the pooled vector of Long-CLIP-L reading up to 248 tokens.

    Same signature and return value as [`~FluxPipeline.encode_prompt`]: `(prompt_embeds, pooled_prompt_embeds,
    text_ids)`; `prompt_2` goes to T5 (defaults to `prompt`). Weighting syntax is parsed out of both encoders' text and
    weights T5's states. Embeddings passed in are returned as they are, as in diffusers.
    """
    device = device or self._execution_device
    prompts = prompt_list(prompt, prompt_embeds)
    check_images_per_prompt(num_images_per_prompt)
    config = self.transformer.config if self.transformer is not None else None
    check_prompt_embeds(prompt_embeds, "prompt_embeds", config and config.joint_attention_dim)
    check_prompt_embeds(pooled_prompt_embeds, "pooled_prompt_embeds", config and config.pooled_projection_dim, rank=2)

    with scaled_lora(self, lora_scale, FluxLoraLoaderMixin, [self.text_encoder, self.text_encoder_2]):
        if prompt_embeds is None:
            prompts_2 = batch_of(prompt_2 or None, len(prompts), "prompt_2", prompts)  # "" → `prompt`, as diffusers
            if isinstance(self, TextualInversionLoaderMixin):
                prompts = self.maybe_convert_prompt(prompts, self.tokenizer)
                prompts_2 = self.maybe_convert_prompt(prompts_2, self.tokenizer_2)
            pooled_prompt_embeds = clip_pooled_output(self.text_encoder, self.tokenizer, prompts)
            pooled_prompt_embeds = pooled_prompt_embeds.to(dtype=self.text_encoder.dtype, device=device)
            pooled_prompt_embeds = repeat_per_image(pooled_prompt_embeds, num_images_per_prompt)
            prompt_embeds = encode_t5_prompts(
                self.text_encoder_2,
                self.tokenizer_2,
                prompts_2,
                max_sequence_length=max_sequence_length,
                device=get_module_execution_device(self.text_encoder_2),
            )
            prompt_embeds = prompt_embeds.to(dtype=self.text_encoder_2.dtype, device=device)
            prompt_embeds = repeat_per_image(prompt_embeds, num_images_per_prompt)

    check_finite(prompt_embeds, "prompt_embeds")
    check_finite(pooled_prompt_embeds, "pooled_prompt_embeds")
    dtype = self.text_encoder.dtype if self.text_encoder is not None else self.transformer.dtype
    text_ids = torch.zeros(prompt_embeds.shape[1], 3).to(device=device, dtype=dtype)
    return prompt_embeds, pooled_prompt_embeds, text_ids


def _pooled_width(pipeline: DiffusionPipeline) -> int | None:
    transformer = getattr(pipeline, "transformer", None)
    return transformer.config.pooled_projection_dim if transformer is not None else None


def apply_long_clip_flux(pipeline: DiffusionPipeline, long_clip: Any, keep: int = 20) -> DiffusionPipeline:
    """Make an existing Flux pipeline of any kind (text-to-image, img2img, inpaint, ControlNet, Fill, Kontext, …) read
    248 tokens into its pooled vector, in place.

    ``long_clip``: a Long-CLIP-L checkpoint in any format (file, folder, Hub id) or model, or ``"stretch"`` to stretch
    the pipeline's own CLIP-L with KPS (training-free; refused when it is already long); ``None`` keeps an encoder that
    is already long. The new encoder is read and checked against the transformer's pooled width before the old one is
    released (see :mod:`.core`). ``encode_prompt`` becomes Long-CLIP's; T5 is untouched.
    """
    if long_clip is None:
        if num_positions(pipeline.text_encoder) <= CLIP_POSITIONS:
            raise ValueError(
                f"`text_encoder` of {type(pipeline).__name__} reads {num_positions(pipeline.text_encoder)} positions; "
                "pass `long_clip` (a Long-CLIP-L checkpoint, or 'stretch')."
            )
    elif is_mode(long_clip, Mode.STRETCH):
        stretch_encoder(pipeline, "text_encoder", keep)
    else:
        where = f"`text_encoder` of {type(pipeline).__name__} ({long_clip if isinstance(long_clip, str) else 'model'})"
        put_encoder(pipeline, "text_encoder", load_encoder(long_clip, where=where, expected_width=_pooled_width(pipeline)))
    length = num_positions(pipeline.text_encoder)
    pipeline.register_modules(tokenizer=tokenizer_for(pipeline.tokenizer, model_max_length=length))
    pipeline.tokenizer_max_length = length
    install_encode_prompt(pipeline, encode_prompt, LongCLIPFluxPipeline)
    return pipeline


class LongCLIPFluxPipeline(FluxPipeline):
    r"""
    Flux with Long-CLIP-L: the pooled vector reads prompts of up to 248 tokens; T5 is unchanged.

    A [`~diffusers.FluxPipeline`] subclass: same components, same `__call__`, LoRA / textual inversion / IP-Adapter /
    single-file mixins. Only `encode_prompt` and `from_pretrained` change. See the module documentation.

    Example:

    ```py
    >>> import torch
    >>> from longclip_diffusion.pipelines import LongCLIPFluxPipeline

    >>> pipe = LongCLIPFluxPipeline.from_pretrained(
    ...     "black-forest-labs/FLUX.1-dev", long_clip="BeichenZhang/LongCLIP-L", torch_dtype=torch.bfloat16
    ... ).to("cuda")
    >>> image = pipe("A lighthouse on a basalt cliff at dusk, ... (up to 248 CLIP tokens)", guidance_scale=3.5).images[0]
    ```
    """

    # Signature adapted from diffusers.FluxPipeline.__init__ (from_pipe matches components by these types)
    def __init__(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        text_encoder_2: T5EncoderModel,
        tokenizer_2: T5TokenizerFast,
        transformer: FluxTransformer2DModel,
        image_encoder: CLIPVisionModelWithProjection = None,
        feature_extractor: CLIPImageProcessor = None,
    ):
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        width = _pooled_width(self)
        if width is not None and text_encoder is not None:
            check_text_encoder_width(text_encoder, width, where=f"`text_encoder` of {type(self).__name__}")
        if text_encoder is not None:
            self.tokenizer_max_length = num_positions(text_encoder)

    encode_prompt = encode_prompt
    __call__ = checked_call(FluxPipeline.__call__)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, long_clip: Any = None, keep: int = 20, **kwargs
    ) -> LongCLIPFluxPipeline:
        r"""
        Load a Flux base and put Long-CLIP-L in it.

        Args:
            pretrained_model_name_or_path: a diffusers Flux folder or Hub id (or a saved Long-CLIP Flux pipeline).
            long_clip: `None` (the folder already holds a long CLIP-L, e.g. saved by this class); a Long-CLIP-L
                checkpoint in any format [`~longclip_diffusion.checkpoints.load_text_encoder`] reads (file, folder,
                Hub id, or a model); or `"stretch"` to stretch the base's own CLIP-L with KPS (training-free).
            keep: rows kept by the KPS stretch (only with `"stretch"`).
            kwargs: passed to [`~diffusers.DiffusionPipeline.from_pretrained`]; `dtype` and `torch_dtype` both work.
        """
        dtype = dtype_argument(kwargs)
        if long_clip is not None and not is_mode(long_clip, Mode.STRETCH):
            text_encoder = load_encoder(long_clip, where=str(long_clip), expected_width=None, dtype=dtype)
            kwargs.setdefault("text_encoder", text_encoder)
            kwargs.setdefault("tokenizer", load_tokenizer(num_positions(text_encoder)))
            long_clip = None
        pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return apply_long_clip_flux(pipeline, long_clip, keep=keep) if long_clip is not None else pipeline


def _is_flux(pipeline: DiffusionPipeline) -> bool:
    names = ("transformer", "text_encoder", "text_encoder_2", "tokenizer_2")
    return all(hasattr(pipeline, name) for name in names) and not hasattr(pipeline, "text_encoder_3")


register_family(Family("Flux", _is_flux, apply_long_clip_flux))
