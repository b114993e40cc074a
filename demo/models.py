"""Model and embedding caches for the demo, and the default loader.

Wiring only: the Long-CLIP pipelines come from :mod:`longclip_diffusion.pipelines`; the stock-CLIP
comparison is a plain diffusers pipeline that shares the UNet, VAE and safety checker of the
Long-CLIP one (only the original text encoder(s) and tokenizer(s) are loaded a second time).
"""

from __future__ import annotations

import inspect
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from longclip_diffusion.defaults import CLIP_TOKEN_LIMIT

# encode_prompt() outputs, in order, under the names __call__ takes them.
_SD_EMBED_NAMES = ("prompt_embeds", "negative_prompt_embeds")
_SDXL_EMBED_NAMES = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


@dataclass(frozen=True)
class ModelSpec:
    """What the user picked: base model (Hub id or local folder), Long-CLIP checkpoint, SDXL or SD 1.x."""

    base: str
    long_clip: str
    sdxl: bool = False


class LoadedModels:
    """A Long-CLIP pipeline, and the stock-CLIP pipeline loaded on first use (``stock_loader``)."""

    def __init__(self, long_clip: Any, stock: Any = None, stock_loader: Callable[[], Any] | None = None):
        self.long_clip = long_clip
        self._stock = stock
        self._stock_loader = stock_loader
        self._lock = threading.Lock()

    def stock(self) -> Any:
        with self._lock:
            if self._stock is None and self._stock_loader is not None:
                self._stock = self._stock_loader()
            if self._stock is None:
                raise ValueError("This model has no stock-CLIP comparison pipeline.")
            return self._stock


ModelLoader = Callable[[ModelSpec], LoadedModels]


class ModelCache:
    """Loads each :class:`ModelSpec` once; keeps the ``max_models`` most recently used."""

    def __init__(self, loader: ModelLoader, max_models: int = 1):
        self.loader = loader
        self.max_models = max(1, max_models)
        self._models: OrderedDict[ModelSpec, LoadedModels] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> LoadedModels:
        with self._lock:
            if spec in self._models:
                self._models.move_to_end(spec)
                return self._models[spec]
            # Free the old model before loading the next one: two SDXLs rarely fit.
            while len(self._models) >= self.max_models:
                self._models.popitem(last=False)
            models = self.loader(spec)
            self._models[spec] = models
            return models

    def __contains__(self, spec: ModelSpec) -> bool:
        return spec in self._models


class EmbeddingCache:
    """LRU of prompt embeddings keyed by (model, encoder, prompt, negative prompt).

    Re-rolling the seed, or changing steps, guidance or size, reuses the embeddings.
    """

    def __init__(self, max_entries: int = 32):
        self.max_entries = max(1, max_entries)
        self._entries: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        value = compute()
        with self._lock:
            self.misses += 1
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def is_sdxl_pipeline(pipe: Any) -> bool:
    from diffusers import StableDiffusionXLPipeline

    return isinstance(pipe, StableDiffusionXLPipeline)


def encode(pipe: Any, prompt: str, negative_prompt: str) -> dict[str, Any]:
    """Encode with the pipeline's own ``encode_prompt``; return the ``__call__`` keyword arguments."""
    outputs = pipe.encode_prompt(
        prompt=prompt,
        device=pipe._execution_device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=negative_prompt or None,
    )
    names = _SDXL_EMBED_NAMES if is_sdxl_pipeline(pipe) else _SD_EMBED_NAMES
    return dict(zip(names, outputs, strict=True))


def _from_pretrained_kwargs(base: str, dtype: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": dtype}
    if os.path.isdir(base):
        kwargs["local_files_only"] = True  # a local folder never needs the network
    return kwargs


def stock_pipeline(long_pipe: Any, base: str, **from_pretrained_kwargs: Any) -> Any:
    """A plain diffusers pipeline with ``base``'s original text encoder(s), sharing everything else."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    sdxl = is_sdxl_pipeline(long_pipe)
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    dtype = from_pretrained_kwargs.get("dtype")
    local = {k: v for k, v in from_pretrained_kwargs.items() if k != "dtype"}
    accepted = inspect.signature(cls.__init__).parameters
    components = {k: v for k, v in long_pipe.components.items() if k in accepted}
    components["text_encoder"] = CLIPTextModel.from_pretrained(
        base, subfolder="text_encoder", torch_dtype=dtype, **local
    )
    components["tokenizer"] = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **local)
    if sdxl:
        components["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            base, subfolder="text_encoder_2", torch_dtype=dtype, **local
        )
        components["tokenizer_2"] = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", **local)
    else:
        components["requires_safety_checker"] = False
    positions = components["text_encoder"].config.max_position_embeddings
    if positions > CLIP_TOKEN_LIMIT:
        from .errors import DemoInputError

        raise DemoInputError(
            f"The base model {base} already holds a long text encoder ({positions} positions), so a stock-CLIP "
            "comparison from it would not be stock. Pick the original base model, or untick the comparison."
        )
    # Schedulers keep per-run state: give each pipeline its own (same config).
    scheduler = long_pipe.scheduler
    components["scheduler"] = type(scheduler).from_config(scheduler.config)
    pipe = cls(**components)
    return pipe.to(long_pipe.device)


def load_models(spec: ModelSpec, device: str | None = None) -> LoadedModels:
    """Default loader: the library's Long-CLIP pipeline; the stock one on first comparison."""
    from longclip_diffusion import pipelines
    from longclip_diffusion.defaults import pick_device_and_dtype

    from .access import KEEP
    from .errors import DemoInputError

    name = "LongCLIPStableDiffusionXLPipeline" if spec.sdxl else "LongCLIPStableDiffusionPipeline"
    cls = getattr(pipelines, name, None)
    if cls is None:
        family = "SDXL" if spec.sdxl else "SD 1.x"
        raise DemoInputError(f"{family} is not supported by this installation ({name} is missing).")
    device, dtype = pick_device_and_dtype(device)
    kwargs = _from_pretrained_kwargs(spec.base, dtype)
    long_clip = None if spec.long_clip == KEEP else spec.long_clip
    long_pipe = cls.from_pretrained(spec.base, long_clip=long_clip, **kwargs).to(device)
    long_pipe.set_progress_bar_config(disable=True)

    def load_stock() -> Any:
        pipe = stock_pipeline(long_pipe, spec.base, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return LoadedModels(long_pipe, stock_loader=load_stock)
