"""Long-caption data: record readers (ShareGPT4V JSON, JSONL, CSV, tar shards), CLIP preprocessing without
torchvision, a resumable distributed sampler and the collate function that tokenizes captions."""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, default_collate

from .. import tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")

REPLACEMENT_TRIES = 64  # an unreadable image is replaced by the next readable one among the next few
LOGGED_PROBLEMS = 10  # problems logged one by one; the rest only counted

logger = logging.getLogger(__name__)


def short_caption_of(long_caption: str) -> str:
    """The reference's default short caption: the long caption up to its first ``". "``."""
    return long_caption.split(". ")[0]


def centre_crop_box(image_size: tuple[int, int], size: int) -> tuple[float, float, float, float]:
    """The region of an image of ``image_size`` that becomes the ``size`` × ``size`` centre crop once its shortest side
    is resized to ``size``, in the image's own coordinates."""
    width, height = image_size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_width - size) // 2, (new_height - size) // 2
    x_scale, y_scale = width / new_width, height / new_height
    return left * x_scale, top * y_scale, (left + size) * x_scale, (top + size) * y_scale


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """CLIP preprocessing: RGB, shortest side to ``size`` (bicubic), centre crop, scale to [0, 1], CLIP mean/std.

    Only the source region of the centre crop is resampled (``resize(box=...)``): the filter taps of resizing the
    whole image and then cropping, within a grey level of rounding, for less work on images that are not square.
    """
    image = image.convert("RGB")
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=centre_crop_box(image.size, size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels - mean) / std


@dataclass(frozen=True)
class Record:
    """One training or evaluation sample: where its image is, its long caption and its short caption.

    ``image`` is a file path, or ``"<shard.tar>::<offset>:<size>"`` for the bytes of an image inside a tar shard.
    ``where`` names the sample for messages (``data.jsonl line 7``, ``shard.tar member 's/0001.png'``). ``label`` is
    used by zero-shot classification only.
    """

    image: str
    long_caption: str
    short_caption: str
    label: str = ""
    where: str = ""


@dataclass(frozen=True)
class Skipped:
    """A sample left out of the data set: where it is (file and line, entry or tar member) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def _text_problem(value: object, name: str) -> str | None:
    """Why ``value`` cannot be a caption (``name`` says which one), or ``None`` when it can."""
    if value is None:
        return f"{name} is missing"
    if not isinstance(value, str):
        return f"{name} is {type(value).__name__} {str(value)[:40]!r}, not text"
    if not value.strip():
        return f"{name} is empty"
    return None


def _record(where: str, image: str, long_caption: object, long_name: str, short_caption: object, label: str = "") -> Record | Skipped:
    """A checked record: the long caption must be text; a short caption, when given, too (else the default)."""
    problem = _text_problem(long_caption, long_name) or (
        _text_problem(short_caption, "'short_caption'") if short_caption not in (None, "") else None
    )
    if problem:
        return Skipped(where, problem)
    long_caption = long_caption.strip()
    short_caption = (short_caption or "").strip() or short_caption_of(long_caption)
    return Record(image, long_caption, short_caption, label, where)


def _resolve(image: str, image_root: str) -> str:
    return str(Path(image_root) / image) if image_root and not Path(image).is_absolute() else image


def _from_mapping(item: object, where: str, image_root: str) -> Record | Skipped:
    """A record from a ShareGPT4V entry (``image`` + ``conversations``) or a simple one (``image`` + captions)."""
    if not isinstance(item, dict):
        return Skipped(where, f"expected an object with 'image' and a caption, found {type(item).__name__}")
    if "image" not in item:
        return Skipped(where, f"no 'image' field (fields: {', '.join(sorted(map(str, item))) or 'none'})")
    problem = _text_problem(item["image"], "'image'")
    if problem:
        return Skipped(where, problem)
    image = _resolve(item["image"], image_root)
    label = item.get("label", "")
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        return Skipped(where, f"'label' is {type(label).__name__}, not text")
    label = str(label)
    if "conversations" in item:
        turns = item["conversations"]
        if not (isinstance(turns, list) and len(turns) > 1 and isinstance(turns[1], dict) and "value" in turns[1]):
            return Skipped(where, "expected the long caption in conversations[1]['value']")
        name, long_caption = "conversations[1].value", turns[1]["value"]
    else:
        name = next((key for key in ("long_caption", "caption") if key in item), "label" if label else None)
        if name is None:
            return Skipped(where, "has neither 'long_caption' nor 'caption' (nor a 'label')")
        long_caption = item[name]
    record = _record(where, image, long_caption, f"'{name}'", item.get("short_caption"), label)
    if isinstance(record, Record) and not Path(image).is_file():
        return Skipped(where, f"image {image} does not exist (check --image-root and the paths in the file)")
    return record


def _tar_members(path: Path, archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member of an opened shard; raises when the shard is truncated or damaged, naming the last good member."""
    members: list[tarfile.TarInfo] = []
    size = path.stat().st_size

    def damaged(problem: str) -> ValueError:
        after = f"after member {members[-1].name!r}" if members else "at its start"
        return ValueError(
            f"{path}: {problem} {after} ({len(members)} members read); the shard is truncated or damaged: "
            "re-create or re-download it, or leave it out of --train-data"
        )

    try:
        for member in archive:
            if member.offset_data + member.size > size:
                raise damaged(f"member {member.name!r} needs {member.offset_data + member.size} bytes, the file has {size},")
            members.append(member)
    except tarfile.TarError as error:
        raise damaged(f"unreadable ({error})") from None
    with path.open("rb") as handle:  # tarfile stops silently where a header is missing or unreadable
        handle.seek(archive.offset)
        marker = handle.read(tarfile.BLOCKSIZE)
    if marker != bytes(tarfile.BLOCKSIZE):
        raise damaged("no end-of-archive marker" if not marker else f"an unreadable header at byte {archive.offset}")
    return members


def _tar_records(path: Path) -> list[Record | Skipped]:
    """Group tar members by key (the name up to the first dot of the file name, as webdataset does)."""
    try:
        archive = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"{path}: not an uncompressed tar archive ({error}); give .tar shards, or --data-format") from None
    entries: list[Record | Skipped] = []
    with archive:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        for member in _tar_members(path, archive):
            directory, _, name = member.name.rpartition("/")
            stem, dot, extension = name.partition(".")
            if member.isfile() and dot:
                groups.setdefault(f"{directory}/{stem}" if directory else stem, {})[extension.lower()] = member
        for key, members in groups.items():
            image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
            captions = {e: m for e, m in members.items() if e in ("txt", "json", "short.txt")}
            if image is None:
                if captions:
                    entries.append(Skipped(f"{path} member {next(iter(captions.values())).name!r}", "a caption without an image"))
                continue
            where = f"{path} member {image.name!r}"
            if not captions:
                entries.append(Skipped(where, "an image without a .txt or .json caption"))
                continue
            try:
                texts = {e: archive.extractfile(m).read().decode("utf-8") for e, m in captions.items()}
                meta = json.loads(texts["json"]) if "json" in texts else None
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                entries.append(Skipped(where, f"its caption is not UTF-8 text / valid JSON ({error})"))
                continue
            location = f"{path}::{image.offset_data}:{image.size}"
            if meta is None:
                entries.append(_record(where, location, texts.get("txt"), "the .txt caption", texts.get("short.txt")))
            elif not isinstance(meta, dict):
                entries.append(Skipped(where, f"its .json caption holds {type(meta).__name__}, not an object"))
            else:
                name = "long_caption" if "long_caption" in meta else "caption"
                entries.append(_record(where, location, meta.get(name), f"'{name}' in its .json", meta.get("short_caption")))
    return entries


def _detect_format(path: Path) -> str:
    kind = {".tar": "tar", ".csv": "csv", ".jsonl": "jsonl", ".json": "json"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: cannot tell the data format from the extension; pass --data-format (sharegpt4v, json, jsonl, csv, tar)")
    return kind


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}); is this the right file or --data-format?") from None


def _csv_records(path: Path, image_root: str) -> list[Record | Skipped]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if not reader.fieldnames or "image" not in reader.fieldnames:
        raise ValueError(f"{path}: the CSV header has no 'image' column (columns: {', '.join(reader.fieldnames or [])})")
    entries: list[Record | Skipped] = []
    try:
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if None in row:
                entries.append(Skipped(where, f"{len(reader.fieldnames) + len(row[None])} fields, the header has {len(reader.fieldnames)}"))
                continue
            entries.append(_from_mapping({key: value for key, value in row.items() if value}, where, image_root))
    except csv.Error as error:
        raise ValueError(f"{path} line {reader.line_num}: not valid CSV ({error})") from None
    return entries


def _jsonl_records(path: Path, image_root: str) -> list[Record | Skipped]:
    entries: list[Record | Skipped] = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            entries.append(Skipped(where, f"not valid JSON ({error.msg}, column {error.colno})"))
            continue
        entries.append(_from_mapping(item, where, image_root))
    return entries


def _json_records(path: Path, image_root: str) -> list[Record | Skipped]:
    try:
        items = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno} column {error.colno}: not valid JSON ({error.msg})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of samples at the top level, found {type(items).__name__}")
    entries: list[Record | Skipped] = []
    for number, item in enumerate(items, start=1):
        name = f" (id {item['id']!r})" if isinstance(item, dict) and isinstance(item.get("id"), (str, int)) else ""
        entries.append(_from_mapping(item, f"{path} entry {number}{name}", image_root))
    return entries


def read_records(path: str | Path, data_format: str = "auto", image_root: str = "") -> list[Record | Skipped]:
    """The samples listed in ``path`` (ShareGPT4V/simple JSON, JSONL, CSV with a header, or a tar shard), in order.

    A sample that cannot be used (no image field, a missing image file, an empty or non-text caption, a broken JSONL
    line, a tar member without its caption) is a :class:`Skipped` naming the file and line, entry (counted from 1) or
    member. A file that cannot be read at all (missing, not UTF-8, invalid JSON, a truncated tar) raises.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"data file {path} is a folder; give the JSON/JSONL/CSV file or the .tar shards in it")
    kind = _detect_format(path) if data_format == "auto" else data_format
    root = image_root or str(path.parent)
    if kind == "tar":
        return _tar_records(path)
    if kind == "csv":
        return _csv_records(path, root)
    if kind == "jsonl":
        return _jsonl_records(path, root)
    return _json_records(path, root)


def open_image(location: str, size: int | None = None) -> Image.Image:
    """Open an image file, or image bytes inside a tar shard (``"<shard.tar>::<offset>:<size>"``), as RGB.

    With ``size`` (the side :func:`preprocess_image` will make), a JPEG is decoded at 1/2, 1/4 or 1/8 scale (in the
    decoder's DCT) as long as both sides stay at least ``2 * size``, as ``Image.thumbnail`` does: the bicubic filter
    still makes the last 2× or more. Large photos decode about twice as fast, within 3 grey levels (0.2 on average) of
    a full decode (``benchmarks/data_loading.py``); images under ``4 * size`` on their shortest side decode in full.
    """
    if "::" in location:
        shard, span = location.rsplit("::", 1)
        offset, length = (int(part) for part in span.split(":"))
        with open(shard, "rb") as handle:
            handle.seek(offset)
            source = io.BytesIO(handle.read(length))
    else:
        source = location
    with Image.open(source) as image:
        if size is not None:
            image.draft("RGB", (2 * size, 2 * size))  # JPEG only; other formats ignore it
        return image.convert("RGB")


class CaptionDataset(Dataset):
    """Map-style dataset of :class:`Record` → ``(pixels[3, S, S], long caption, short caption, problem)``.

    An image that cannot be read is replaced by the next readable sample (so batches keep their size on every rank);
    ``problem`` then names the sample and the error, else it is ``""``. The training loop counts these, evaluation
    refuses them. ``skipped`` and ``total`` tell what :func:`load_dataset` left out of how many samples.
    """

    def __init__(self, records: Sequence[Record], image_size: int, skipped: Sequence[Skipped] = (), total: int | None = None) -> None:
        self.records = list(records)
        self.image_size = image_size
        self.skipped = list(skipped)
        self.total = len(self.records) + len(self.skipped) if total is None else total

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str, str]:
        problem = ""
        for attempt in range(REPLACEMENT_TRIES):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                pixels = preprocess_image(open_image(record.image, self.image_size), self.image_size)
            except Exception as error:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError…)
                what = record.where if "::" in record.image else f"{record.where}: image {record.image}".lstrip(": ")
                problem = problem or f"{what} cannot be read ({type(error).__name__}: {error})"
                continue
            return pixels, record.long_caption, record.short_caption, problem
        raise ValueError(f"{problem}; and the next {REPLACEMENT_TRIES - 1} images cannot be read either")


def load_dataset(
    paths: Sequence[str],
    image_size: int,
    data_format: str = "auto",
    image_root: str = "",
    skip_first: int = 0,
    max_bad_fraction: float = 0.0,
) -> CaptionDataset:
    """Concatenate the records of several data files (``skip_first`` drops the first N entries, e.g. ShareGPT4V-1k).

    Unusable samples are left out and counted; when more than ``max_bad_fraction`` of the samples (after
    ``skip_first``) are unusable, this raises a ``ValueError`` naming how many and the first few. Otherwise each one is
    logged as a warning.
    """
    if not paths:
        raise ValueError("no data given; pass --train-data (or --data): JSON/JSONL/CSV files or .tar shards")
    entries: list[Record | Skipped] = []
    for path in paths:
        entries.extend(read_records(path, data_format, image_root))
    entries = entries[skip_first:]
    records = [entry for entry in entries if isinstance(entry, Record)]
    skipped = [entry for entry in entries if isinstance(entry, Skipped)]
    if not entries:
        raise ValueError(f"{', '.join(map(str, paths))}: no samples" + (f" after the first {skip_first}" if skip_first else ""))
    if len(skipped) > max_bad_fraction * len(entries):
        first = "; ".join(map(str, skipped[:3]))
        raise ValueError(
            f"{len(skipped)} of {len(entries)} samples ({100 * len(skipped) / len(entries):.2g} %) cannot be used, more "
            f"than --max-bad-fraction {max_bad_fraction:g} allows; first: {first}"
        )
    for entry in skipped[:LOGGED_PROBLEMS]:
        logger.warning("skipped %s", entry)
    if skipped:
        logger.warning("skipped %d of %d samples (%.2g %%)", len(skipped), len(entries), 100 * len(skipped) / len(entries))
    return CaptionDataset(records, image_size, skipped, len(entries))


def batches(loader: Iterable) -> Iterator:
    """The batches of a ``DataLoader``; an error a worker process raised keeps its own one-line message.

    (torch re-raises a worker's exception as ``Caught ValueError in DataLoader worker process 0.`` followed by the
    worker's traceback; the last line of that is the original message.)
    """
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (ValueError, OSError) as error:
            lines = str(error).strip().splitlines()
            if not (lines and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]):
                raise
            raise type(error)(lines[-1].split(": ", 1)[-1]) from None
        yield batch


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
                "lower --batch-size or add data"
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


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Cut the columns after the last end-of-text token of the batch.

    CLIP's text attention is causal and the pooled feature is read at end-of-text, so the padding after it never
    changes the features: trimming gives the same result, faster (a short caption costs ~15 positions, not 248).
    """
    is_end = ids == tokenizer.END_OF_TEXT
    if not bool(is_end.any(dim=1).all()):
        return ids
    length = int(is_end.float().argmax(dim=1).max()) + 1
    return ids[:, :length]


class CaptionCollator:
    """Stacks images and tokenizes captions with the core tokenizer (real CLIP BPE) to ``context_length``.

    A caption longer than ``context_length`` tokens is cut (end-of-text kept last, as the reference does) and
    counted: the batch holds ``long_cut``/``short_cut`` (how many were cut) and ``problems`` (the images replaced by
    :class:`CaptionDataset`). The ids are trimmed after the batch's longest caption (:func:`trim_padding`), here on the
    host. Token ids of recently seen captions are cached (captions repeat every epoch; BPE is the slow part).
    """

    def __init__(self, context_length: int, cache_size: int = 65536) -> None:
        self.context_length = context_length
        self._ids = functools.lru_cache(maxsize=cache_size)(self._tokenize_one)

    def __getstate__(self) -> dict:
        return {"context_length": self.context_length, "cache_size": self._ids.cache_info().maxsize}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["context_length"], state["cache_size"])

    def _tokenize_one(self, text: str) -> tuple[torch.Tensor, bool]:
        """Ids cut to ``context_length``, and whether that cut anything (one position more shows it)."""
        row = tokenizer.tokenize([text], context_length=self.context_length + 1, truncate=True)[0]
        cut = bool(row[-1] != 0)
        ids = row[:-1].clone()
        if cut:
            ids[-1] = tokenizer.END_OF_TEXT
        return ids, cut

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, int]:
        """Token ids ``[len(texts), context_length]`` and how many texts were cut."""
        tokenized = [self._ids(text) for text in texts]
        return torch.stack([ids for ids, _ in tokenized]), sum(cut for _, cut in tokenized)

    def __call__(self, batch: list[tuple]) -> dict:
        images, longs, shorts, *rest = zip(*batch)
        long_ids, long_cut = self.tokenize(longs)
        short_ids, short_cut = self.tokenize(shorts)
        return {
            "pixel_values": default_collate(images),  # in a loader worker, stacked straight into shared memory
            "long_ids": trim_padding(long_ids),
            "short_ids": trim_padding(short_ids),
            "long_cut": long_cut,
            "short_cut": short_cut,
            "problems": [problem for problem in rest[0] if problem] if rest else [],
        }
