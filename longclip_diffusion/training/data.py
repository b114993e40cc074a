"""Long-caption data: record readers (ShareGPT4V JSON, JSONL, CSV, tar shards), CLIP preprocessing without
torchvision, a resumable distributed sampler and the collate function that tokenizes captions."""

from __future__ import annotations

import csv
import functools
import io
import json

import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .. import tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


def short_caption_of(long_caption: str) -> str:
    """The reference's default short caption: the long caption up to its first ``". "``."""
    return long_caption.split(". ")[0]


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """CLIP preprocessing: RGB, shortest side to ``size`` (bicubic), centre crop, scale to [0, 1], CLIP mean/std."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BICUBIC)
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels - mean) / std


@dataclass(frozen=True)
class Record:
    """One training or evaluation sample: where its image is, its long caption and its short caption.

    ``image`` is a file path, or ``"<shard.tar>::<offset>:<size>"`` for the bytes of an image inside a tar shard. ``label`` is used by
    zero-shot classification only.
    """

    image: str
    long_caption: str
    short_caption: str
    label: str = ""


def _record(image: str, long_caption: str, short_caption: str | None, label: str = "") -> Record:
    return Record(image, long_caption, short_caption or short_caption_of(long_caption), label)


def _resolve(image: str, image_root: str) -> str:
    return str(Path(image_root) / image) if image_root and not Path(image).is_absolute() else image


def _from_mapping(item: dict, source: str, index: int, image_root: str) -> Record:
    """A record from a ShareGPT4V entry (``image`` + ``conversations``) or a simple one (``image`` + captions)."""
    if "image" not in item:
        raise ValueError(f"{source}: entry {index} has no 'image' field (keys: {', '.join(sorted(item))})")
    image = _resolve(str(item["image"]), image_root)
    if "conversations" in item:
        turns = item["conversations"]
        if len(turns) < 2 or "value" not in turns[1]:
            raise ValueError(f"{source}: entry {index}: expected the long caption in conversations[1]['value']")
        return _record(image, turns[1]["value"], item.get("short_caption"))
    long_caption = item.get("long_caption", item.get("caption"))
    label = str(item.get("label", ""))
    if long_caption is None and not label:
        raise ValueError(f"{source}: entry {index} has neither 'long_caption' nor 'caption' (nor a 'label')")
    return _record(image, long_caption or label, item.get("short_caption"), label)


def _tar_records(path: Path) -> list[Record]:
    """Group tar members by key (the name up to the first dot of the file name, as webdataset does)."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(path) as archive:
        for member in archive:
            if not member.isfile():
                continue
            directory, _, name = member.name.rpartition("/")
            stem, dot, extension = name.partition(".")
            if dot:
                groups.setdefault(f"{directory}/{stem}", {})[extension.lower()] = member
        records = []
        for key, members in groups.items():
            image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
            if image is None:
                continue
            texts = {e: archive.extractfile(m).read().decode("utf-8") for e, m in members.items() if e in ("txt", "json", "short.txt")}
            if "json" in texts:
                meta = json.loads(texts["json"])
                long_caption, short_caption = meta.get("long_caption", meta.get("caption")), meta.get("short_caption")
            else:
                long_caption, short_caption = texts.get("txt"), texts.get("short.txt")
            if long_caption is None:
                raise ValueError(f"{path}: sample {key!r} has an image but no .txt or .json caption")
            records.append(_record(f"{path}::{image.offset_data}:{image.size}", long_caption.strip(), short_caption))
    return records


def _detect_format(path: Path) -> str:
    if path.suffix == ".tar":
        return "tar"
    if path.suffix == ".csv":
        return "csv"
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".json":
        return "json"
    raise ValueError(f"{path}: cannot tell the data format from the extension; pass data_format (sharegpt4v, jsonl, csv, tar)")


def read_records(path: str | Path, data_format: str = "auto", image_root: str = "") -> list[Record]:
    """Read the samples listed in ``path`` (ShareGPT4V/simple JSON, JSONL, CSV with a header, or a tar shard)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    kind = _detect_format(path) if data_format == "auto" else data_format
    root = image_root or str(path.parent)
    if kind == "tar":
        return _tar_records(path)
    if kind == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [_from_mapping({k: v for k, v in row.items() if v}, str(path), i, root) for i, row in enumerate(rows)]
    text = path.read_text(encoding="utf-8")
    if kind == "jsonl":
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of samples at the top level, found {type(items).__name__}")
    return [_from_mapping(item, str(path), i, root) for i, item in enumerate(items)]


def open_image(location: str) -> Image.Image:
    """Open an image file, or image bytes inside a tar shard (``"<shard.tar>::<offset>:<size>"``)."""
    if "::" in location:
        shard, span = location.rsplit("::", 1)
        offset, size = (int(part) for part in span.split(":"))
        with open(shard, "rb") as handle:
            handle.seek(offset)
            return Image.open(io.BytesIO(handle.read(size))).convert("RGB")
    try:
        with Image.open(location) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {location} does not exist; check image_root / the paths in the data file") from None


class CaptionDataset(Dataset):
    """Map-style dataset of :class:`Record` → ``(pixels[3, S, S], long caption, short caption)``."""

    def __init__(self, records: Sequence[Record], image_size: int) -> None:
        self.records = list(records)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        record = self.records[index]
        return preprocess_image(open_image(record.image), self.image_size), record.long_caption, record.short_caption


def load_dataset(paths: Sequence[str], image_size: int, data_format: str = "auto", image_root: str = "", skip_first: int = 0) -> CaptionDataset:
    """Concatenate the records of several data files (``skip_first`` drops the first N, e.g. ShareGPT4V-1k)."""
    if not paths:
        raise ValueError("no training data given; set train_data (a JSON/JSONL/CSV file or tar shards)")
    records: list[Record] = []
    for path in paths:
        records.extend(read_records(path, data_format, image_root))
    return CaptionDataset(records[skip_first:], image_size)


class ResumableSampler(Sampler[int]):
    """Deterministic per-epoch shuffle split across ranks (like ``DistributedSampler``, dropping the tail so every
    rank gets whole batches), which can start part-way through an epoch for exact resume."""

    def __init__(self, length: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        self.length, self.batch_size, self.rank, self.world_size = length, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0
        self.start_batch = 0
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{length} samples are fewer than one global batch ({batch_size} x {world_size} processes); "
                "lower batch_size or add data"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.length // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, start_batch: int) -> None:
        """Continue at batch ``start_batch`` of ``epoch``."""
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        global_batch = self.batch_size * self.world_size
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * global_batch + self.rank * self.batch_size
            yield from order[start : start + self.batch_size]

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class CaptionCollator:
    """Stacks images and tokenizes captions with the core tokenizer (real CLIP BPE) to ``context_length``.

    Token ids of recently seen captions are cached (captions repeat every epoch; BPE is the slow part).
    """

    def __init__(self, context_length: int, cache_size: int = 65536) -> None:
        self.context_length = context_length
        self._ids = functools.lru_cache(maxsize=cache_size)(self._tokenize_one)

    def __getstate__(self) -> dict:
        return {"context_length": self.context_length, "cache_size": self._ids.cache_info().maxsize}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["context_length"], state["cache_size"])

    def _tokenize_one(self, text: str) -> torch.Tensor:
        return tokenizer.tokenize([text], context_length=self.context_length, truncate=True)[0]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.stack([self._ids(text) for text in texts])

    def __call__(self, batch: list[tuple[torch.Tensor, str, str]]) -> dict[str, torch.Tensor]:
        images, longs, shorts = zip(*batch)
        return {
            "pixel_values": torch.stack(images),
            "long_ids": self.tokenize(longs),
            "short_ids": self.tokenize(shorts),
        }
