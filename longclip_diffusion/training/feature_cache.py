"""Text-only Long-CLIP training: the frozen vision tower runs once over the data set, its image features go to an
on-disk cache, and training then runs the text tower alone against them.

The cache is a folder of safetensors shards (``shard-00000.safetensors``…, ``SHARD_SIZE`` samples each, L2-normalised
fp32 features in data-set order) plus ``manifest.json``. Its folder name is a key over everything the features depend
on: the vision tower's weights and config, the preprocessing (image size, resize, crop, mean/std), the precision they
were computed in and the list of images. A different model, preprocessing or data therefore gets a different folder:
a stale cache is never reused. Shards are written atomically (``files.atomic_file``) one by one, so a run killed
while caching keeps the finished shards and the next run computes only the missing ones. With several processes,
rank ``r`` computes shards ``r, r + W, …`` and every rank then reads the whole cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import CLIPModel

from ..files import atomic_file
from .data import CLIP_MEAN, CLIP_STD, CaptionCollator
from .distributed import DistributedContext
from .model import _as_tensor

SHARD_SIZE = 4096
MANIFEST_NAME = "manifest.json"
# what preprocess_image does; bump "version" when it changes so old caches are not reused
PREPROCESSING = {
    "decode": "JPEG draft to >= 2 x size", "resize": "shortest side, bicubic, crop box", "crop": "centre",
    "mean": CLIP_MEAN, "std": CLIP_STD, "version": 2,
}

logger = logging.getLogger(__name__)


def vision_modules(model: CLIPModel) -> dict[str, nn.Module]:
    """The parts of ``model`` that make image features (frozen, and left out of training, in text-only mode)."""
    return {"vision_model": model.vision_model, "visual_projection": model.visual_projection}


def freeze_vision_tower(model: CLIPModel) -> None:
    """Stop gradients (and the optimizer) reaching the vision tower."""
    for module in vision_modules(model).values():
        module.requires_grad_(False)


def _update_with_tensor(digest: "hashlib._Hash", name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def vision_fingerprint(model: CLIPModel) -> str:
    """SHA-256 over the vision tower's config and every weight (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(json.dumps(model.config.vision_config.to_dict(), sort_keys=True, default=str).encode())
    for prefix, module in vision_modules(model).items():
        for name, tensor in module.state_dict().items():
            _update_with_tensor(digest, f"{prefix}.{name}", tensor)
    return digest.hexdigest()


def data_fingerprint(dataset: Dataset) -> str:
    """SHA-256 over the images a data set lists, in order (``records`` of a :class:`~.data.CaptionDataset`);
    a data set without records is named by its ``cache_fingerprint`` attribute, else its class and length."""
    digest = hashlib.sha256(str(len(dataset)).encode())
    records = getattr(dataset, "records", None)
    if records is not None:
        for record in records:
            digest.update(record.image.encode() + b"\0")
    else:
        digest.update(f"{type(dataset).__module__}.{type(dataset).__qualname__}".encode())
        digest.update(str(getattr(dataset, "cache_fingerprint", "")).encode())
    return digest.hexdigest()


def cache_description(model: CLIPModel, dataset: Dataset, precision: str) -> dict:
    """Everything the cached features depend on (written to the manifest; its hash names the cache folder)."""
    return {
        "vision": vision_fingerprint(model),
        "data": data_fingerprint(dataset),
        "samples": len(dataset),
        "image_size": int(getattr(dataset, "image_size", model.config.vision_config.image_size)),
        "preprocessing": PREPROCESSING,
        "precision": precision,
        "features": "L2-normalised projected image features, fp32",
        "dim": int(model.config.projection_dim),
    }


def cache_key(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _pixels_and_problems(items: list[tuple]) -> tuple[torch.Tensor, list[str]]:
    """Collate for the cache: stacked pixels and the problem of each item (``""`` when its own image was read)."""
    return torch.stack([item[0] for item in items]), [item[3] if len(item) > 3 else "" for item in items]


class FeatureCache:
    """A cache folder: ``root/<key>/manifest.json`` and ``shard-NNNNN.safetensors`` files."""

    def __init__(self, root: str | Path, description: dict, shard_size: int = SHARD_SIZE) -> None:
        self.description = {**description, "shard_size": shard_size}
        self.key = cache_key(self.description)
        self.directory = Path(root) / self.key[:32]
        self.samples = int(description["samples"])
        self.shard_size = shard_size

    @property
    def shards(self) -> int:
        return -(-self.samples // self.shard_size)

    def shard_path(self, index: int) -> Path:
        return self.directory / f"shard-{index:05d}.safetensors"

    def shard_rows(self, index: int) -> range:
        return range(index * self.shard_size, min(self.samples, (index + 1) * self.shard_size))

    def _shard_is_whole(self, index: int) -> bool:
        path = self.shard_path(index)
        if not path.is_file():
            return False
        try:
            with safe_open(path, framework="pt") as handle:
                rows = handle.get_slice("features").get_shape()[0]
                key = (handle.metadata() or {}).get("key")
        except (SafetensorError, OSError, RuntimeError) as error:
            logger.warning("feature cache shard %s cannot be read (%s); computing it again", path, error)
            return False
        if key != self.key or rows != len(self.shard_rows(index)):
            logger.warning("feature cache shard %s is not this cache's (another key or size); computing it again", path)
            return False
        return True

    def missing_shards(self) -> list[int]:
        """Shards not yet written (or unreadable): what a build still has to compute."""
        return [index for index in range(self.shards) if not self._shard_is_whole(index)]

    def write_manifest(self) -> None:
        path = self.directory / MANIFEST_NAME
        if path.is_file():
            return
        with atomic_file(path) as temporary:
            temporary.write_text(json.dumps({"key": self.key, **self.description}, indent=2) + "\n", encoding="utf-8")

    def write_shard(self, index: int, features: torch.Tensor, problems: Sequence[str]) -> None:
        metadata = {"problems": json.dumps(list(problems)), "key": self.key}
        with atomic_file(self.shard_path(index)) as temporary:
            save_file({"features": features.float().contiguous().cpu()}, str(temporary), metadata=metadata)

    def load(self) -> tuple[torch.Tensor, list[str]]:
        """All features ``[samples, dim]`` and, per sample, the problem of a replaced image (``""`` if none)."""
        features, problems = [], []
        for index in range(self.shards):
            path = self.shard_path(index)
            try:
                with safe_open(path, framework="pt") as handle:
                    if (handle.metadata() or {}).get("key") != self.key:
                        raise ValueError("it belongs to another cache")
                    features.append(handle.get_tensor("features"))
                    problems.extend(json.loads(handle.metadata()["problems"]))
            except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as error:
                raise ValueError(
                    f"feature cache shard {path} cannot be read ({error}); delete {self.directory} and run again"
                ) from None
        return torch.cat(features), problems


@torch.no_grad()
def build_feature_cache(
    model: CLIPModel,
    dataset: Dataset,
    root: str | Path,
    *,
    precision: str = "fp32",
    batch_size: int = 256,
    num_workers: int = 0,
    context: DistributedContext | None = None,
    shard_size: int = SHARD_SIZE,
) -> FeatureCache:
    """Compute (or complete) the image-feature cache of ``dataset`` under ``root``; returns it once every shard exists.

    ``dataset`` items are ``(pixels, long caption, short caption[, problem])``; a sample whose image was replaced keeps
    its problem in the cache, so training still counts it. The vision tower runs in eval mode on the device it is on.
    """
    context = context or DistributedContext()
    cache = FeatureCache(root, cache_description(model, dataset, precision), shard_size)
    device = next(model.vision_model.parameters()).device
    missing = cache.missing_shards()
    if context.enabled:  # every rank has listed the missing shards before any is written: the lists agree
        dist.barrier()
    if context.is_main:
        if missing:
            done = cache.shards - len(missing)
            logger.info(
                "feature cache %s: computing %d of %d shards (%d samples; %d already there)",
                cache.directory, len(missing), cache.shards, cache.samples, done,
            )
        else:
            logger.info("feature cache %s: complete (%d samples), reused", cache.directory, cache.samples)
        cache.write_manifest()
    was_training = model.training
    model.eval()
    autocast = (
        nullcontext()
        if precision == "fp32"
        else torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    )
    for index in missing[context.rank :: context.world_size]:
        loader = DataLoader(
            Subset(dataset, cache.shard_rows(index)), batch_size=batch_size, num_workers=num_workers,
            collate_fn=_pixels_and_problems, pin_memory=device.type == "cuda",
        )
        features, problems = [], []
        for pixels, batch_problems in loader:
            with autocast:
                output = _as_tensor(model.get_image_features(pixel_values=pixels.to(device, non_blocking=True)))
            features.append(F.normalize(output.float(), dim=-1))
            problems.extend(batch_problems)
        cache.write_shard(index, torch.cat(features), problems)
    model.train(was_training)
    if context.enabled:
        dist.barrier()
    return cache


class CachedFeatureDataset(Dataset):
    """``(image feature, long caption, short caption, problem)`` from a cache and the captions of the data set it was
    built from; keeps ``skipped``/``total`` so data counts read as with images."""

    def __init__(self, captions: Dataset, features: torch.Tensor, problems: Sequence[str]) -> None:
        if len(features) != len(captions):
            raise ValueError(f"the feature cache holds {len(features)} samples, the data set {len(captions)}")
        self.features, self.problems = features, list(problems)
        self.captions = captions
        self.skipped = list(getattr(captions, "skipped", ()))
        self.total = getattr(captions, "total", len(captions))

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str, str]:
        problem = self.problems[index]
        records = getattr(self.captions, "records", None)
        if records is not None and not problem:  # the captions without decoding the image
            long_caption, short_caption = records[index].long_caption, records[index].short_caption
        else:  # a replaced image brings its replacement's captions, as in the full loop
            _, long_caption, short_caption, *_ = self.captions[index]
        return self.features[index], long_caption, short_caption, problem


class FeatureCollator(CaptionCollator):
    """:class:`~.data.CaptionCollator` for cached features: the batch holds ``image_features`` instead of pixels."""

    def __call__(self, batch: list[tuple]) -> dict:
        collated = super().__call__(batch)
        collated["image_features"] = collated.pop("pixel_values")
        return collated


class TextTowerFeatures(nn.Module):
    """The text side of :class:`~.model.LongCLIPFeatures`: cached, already normalised image features pass through;
    only the text tower, its projection and the logit scale are held (shared with the ``CLIPModel``) and trained."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection
        self.logit_scale = model.logit_scale

    def forward(
        self, image_features: torch.Tensor, long_ids: torch.Tensor, short_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        long_text = self.encode_text(long_ids)
        short_text = None if short_ids is None else self.encode_text(short_ids)
        return image_features, long_text, short_text, self.logit_scale

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected text features, as ``CLIPModel.get_text_features`` computes them (padding trimmed by
        the caller, as for :meth:`~.model.LongCLIPFeatures.encode_text`)."""
        pooled = self.text_model(input_ids=ids).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)
