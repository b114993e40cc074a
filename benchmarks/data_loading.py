"""Decoded-image throughput of the training data pipeline: how many DataLoader workers keep a GPU fed.

    OMP_NUM_THREADS=1 python benchmarks/data_loading.py                        # defaults: about 4.7 min on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/data_loading.py --classes coco --workers 0 1 --json data-loading.json

The path measured is the trainer's: ``load_dataset`` (a JSONL file) → ``CaptionDataset`` (``open_image(path, 224)``,
which decodes large JPEGs at a reduced scale, then ``preprocess_image``: CLIP preprocessing to 224 px) →
``DataLoader(sampler=ResumableSampler, collate_fn=CaptionCollator(248), pin_memory=<CUDA available>)``, which also
tokenizes the long and short captions and stacks the images with ``default_collate``. Images are written first to a
temporary folder as JPEG (quality 90): smooth gradients, shapes and mild texture (not pure noise, which decodes
unrealistically slowly), in two size classes, COCO-like 640 × 480 and SA-1B-like 2250 × 1500 (both orientations);
captions are 150-240 tokens of English, unique per sample.

Rows:
- loader: samples/s for each ``--workers`` count (``0``: in the main process), in a first epoch (every caption seen
  for the first time). A run's first batch of each worker (start-up) is not timed; the figure is the median over
  ``--repeats`` runs, runs interleaved over classes, counts and loaders. ``--loader-variants`` adds loader rows with
  other decode + preprocessing (``VariantDataset``; default ``reference``, the library before it decoded at a reduced
  scale; collate and tokenizing are the library's in every row).
- pieces, one process, medians over images: decode only (``open_image(path, 224)``), preprocessing only
  (``preprocess_image``); tokenizing a batch of long + short captions on first sight and cached (the collator's cache,
  kept across epochs in the main process and, the trainer's workers being persistent, in each worker for the captions
  that worker has collated); collating the images in a worker: ``default_collate`` (straight into shared memory),
  against ``torch.stack`` then the copy into shared memory a worker's queue makes (the library before 7874607).
- decode + preprocessing variants side by side with ``library`` (``preprocess_image(open_image(path, 224), 224)``):
  ``reference`` decodes in full, resizes the whole image (bicubic, shortest side to 224) and crops the centre, as
  OpenAI CLIP and transformers' ``CLIPImageProcessor`` do (and the library did before); alternatives not taken:
  ``reducing-gap-2``/``-3`` decode in full and pass ``resize(reducing_gap=...)`` (with the library's crop box),
  ``draft-224`` lets JPEG draft mode go down to a shortest side >= 224 instead of >= 448. Each shows its time, its
  speed-up over ``library`` and over ``reference``, and the max / mean absolute difference of its tensors from
  ``reference``'s, in CLIP-normalised units (one 8-bit level is about 0.0146 of them); re-saving the source as JPEG
  quality 90 is shown as a yardstick of a harmless change.

Each DataLoader worker is one process with one thread (torch sets that); the main process uses one thread too.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import DataLoader, default_collate

from longclip_diffusion.files import atomic_file
from longclip_diffusion.tokenizer import token_ids
from longclip_diffusion.training.data import (
    CLIP_MEAN,
    CLIP_STD,
    CaptionCollator,
    CaptionDataset,
    ResumableSampler,
    centre_crop_box,
    load_dataset,
    open_image,
    preprocess_image,
)

SIZE_CLASSES = {"coco": ((640, 480), (480, 640)), "sa1b": ((2250, 1500), (1500, 2250))}
IMAGE_SIZE = 224
CONTEXT_LENGTH = 248
MIN_CAPTION_TOKENS, MAX_CAPTION_TOKENS = 150, 240
NEEDED_RATE = 600  # samples/s a ViT-L/14 step at 224 px needs on one H100/H200 (issue #13: >= 45 % of matmul rate)


# --- data -------------------------------------------------------------------------------------------------------------


def synthetic_photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A photo-like picture: a smooth two-colour gradient, soft-edged shapes, coarse texture and mild sensor noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (x * np.cos(angle) + y * np.sin(angle))[..., None]
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    low, high = rng.uniform(20, 235, (2, 3)).astype(np.float32)
    picture = Image.fromarray((low + (high - low) * ramp).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(rng.integers(8, 20)):
        left, top = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        box = (left, top, left + rng.uniform(0.05, 0.5) * width, top + rng.uniform(0.05, 0.5) * height)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    picture = picture.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 800))
    texture = sum(smooth_noise(width, height, step, sigma, rng) for step, sigma in ((6, 14.0), (2, 10.0)))
    pixels = np.asarray(picture, dtype=np.float32) + texture[..., None] + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def smooth_noise(width: int, height: int, step: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise on a grid ``step`` pixels apart, interpolated to ``height`` × ``width``."""
    grid = rng.normal(0, sigma, (height // step + 1, width // step + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BILINEAR))


SUBJECTS = ["harbour town", "mountain village", "city street", "kitchen", "forest path", "market square", "beach",
            "living room", "train station", "garden", "farmyard", "library", "riverbank", "bakery", "snowy valley"]
ADJECTIVES = ["weathered", "bright", "narrow", "crowded", "quiet", "colourful", "old", "modern", "rustic", "shiny",
              "wooden", "stone", "small", "large", "faded", "ornate", "dusty", "neatly arranged", "tall", "curved"]
OBJECTS = ["boat", "bicycle", "lamp post", "wooden table", "bench", "red umbrella", "stack of books", "flower pot",
           "window box", "street sign", "cat", "dog", "fishing net", "market stall", "clock tower", "bridge", "car",
           "vase of tulips", "chalkboard menu", "staircase", "fountain", "wicker basket", "painting", "armchair"]
PLACES = ["at dusk", "in the early morning", "on a rainy afternoon", "under a clear blue sky", "in soft winter light",
          "on a busy summer day", "at golden hour", "under heavy clouds"]
POSITIONS = ["next to", "in front of", "behind", "to the left of", "to the right of", "leaning against", "beneath"]
COLOURS = ["deep blue", "warm orange", "muted green", "pale yellow", "crimson", "soft grey", "ochre", "teal", "white"]
MOODS = ["calm and nostalgic", "lively and cheerful", "peaceful", "slightly melancholic", "warm and inviting"]


def long_caption(rng: np.random.Generator, tokens: int) -> str:
    """ShareGPT4V-like English: a first sentence (the default short caption), then details to ``tokens`` tokens."""

    def pick(words: list[str]) -> str:
        return words[rng.integers(len(words))]

    sentences = [f"The image shows a {pick(ADJECTIVES)} {pick(SUBJECTS)} {pick(PLACES)}."]
    details = [
        lambda: f"In the foreground, a {pick(ADJECTIVES)} {pick(OBJECTS)} stands {pick(POSITIONS)} a {pick(OBJECTS)}.",
        lambda: f"To the {pick(['left', 'right'])}, a {pick(COLOURS)} {pick(OBJECTS)} rests {pick(POSITIONS)} a "
        f"{pick(ADJECTIVES)} {pick(OBJECTS)}, partly hidden by a {pick(OBJECTS)}.",
        lambda: f"The background features {pick(ADJECTIVES)} buildings with {pick(COLOURS)} shutters and a "
        f"{pick(OBJECTS)} near the corner.",
        lambda: f"The lighting is soft, casting long shadows across the {pick(ADJECTIVES)} ground and the "
        f"{pick(OBJECTS)}.",
        lambda: f"The colour palette is dominated by {pick(COLOURS)} and {pick(COLOURS)}, with touches of "
        f"{pick(COLOURS)} on the {pick(OBJECTS)}.",
        lambda: f"A person in a {pick(COLOURS)} coat walks past the {pick(OBJECTS)}, carrying a {pick(OBJECTS)}.",
    ]
    ending = f" The overall atmosphere of the image is {pick(MOODS)}."
    for _ in range(100):  # add details while the caption is shorter than ``tokens``, never past MAX_CAPTION_TOKENS
        length = len(token_ids([" ".join(sentences) + ending])[0])
        if length >= tokens:
            break
        sentence = details[rng.integers(len(details))]()
        if length + len(token_ids([sentence])[0]) <= MAX_CAPTION_TOKENS:
            sentences.append(sentence)
    return " ".join(sentences) + ending


def write_data(folder: Path, size_class: str, images: int, samples: int, seed: int) -> Path:
    """``images`` JPEG files (quality 90) and a JSONL file of ``samples`` entries with unique long captions."""
    rng = np.random.default_rng(seed)
    (folder / size_class).mkdir(parents=True)
    names = []
    for index in range(images):
        width, height = SIZE_CLASSES[size_class][index % 2]
        name = f"{size_class}/{index:04d}.jpg"
        synthetic_photo(width, height, rng).save(folder / name, quality=90)
        names.append(name)
    data = folder / f"{size_class}.jsonl"
    lengths = rng.integers(MIN_CAPTION_TOKENS, MAX_CAPTION_TOKENS + 1, samples)
    lines = [json.dumps({"image": names[i % images], "long_caption": long_caption(rng, int(lengths[i]))})
             for i in range(samples)]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data


# --- decode + preprocessing: the library, the reference it was checked against, alternatives not taken ---------------


def preprocess_reference(image: Image.Image, size: int) -> torch.Tensor:
    """CLIP preprocessing as OpenAI CLIP and transformers' ``CLIPImageProcessor`` do it (and the library did before
    7874607): resize the whole image (bicubic, shortest side to ``size``), then crop the centre."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return normalise(image.crop((left, top, left + size, top + size)))


def preprocess_reducing_gap(image: Image.Image, size: int, reducing_gap: float) -> torch.Tensor:
    """``preprocess_image`` (the centre crop's source box only) with ``resize(reducing_gap=...)``: a box reduction by
    an integer factor first, then bicubic over the last ``>= reducing_gap`` times; for formats without draft mode."""
    image = image.convert("RGB")
    box = centre_crop_box(image.size, size)
    return normalise(image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=reducing_gap))


def normalise(image: Image.Image) -> torch.Tensor:
    """The tail of ``preprocess_image``: [0, 1], then CLIP mean/std."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def resaved_jpeg(location: str) -> Image.Image:
    """The yardstick: the fully decoded image saved again as JPEG quality 90 and decoded."""
    buffer = io.BytesIO()
    open_image(location).save(buffer, format="JPEG", quality=90)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


VARIANTS: dict[str, Callable[[str, int], torch.Tensor]] = {  # decode + preprocess of one image file
    "library": lambda path, size: preprocess_image(open_image(path, size), size),
    "reference": lambda path, size: preprocess_reference(open_image(path), size),
    "reducing-gap-3": lambda path, size: preprocess_reducing_gap(open_image(path), size, 3.0),
    "reducing-gap-2": lambda path, size: preprocess_reducing_gap(open_image(path), size, 2.0),
    # open_image drafts down to twice its size argument: half of it lets the shortest side go down to ``size``
    "draft-224": lambda path, size: preprocess_image(open_image(path, size // 2), size),
}
LOADER_VARIANTS = ["reference"]
YARDSTICK = "yardstick: source re-saved as JPEG q90"


class VariantDataset(CaptionDataset):
    """The loader comparison rows: ``CaptionDataset`` decoding and preprocessing with one of :data:`VARIANTS` (no
    replacement of unreadable images: every image here reads)."""

    def __init__(self, dataset: CaptionDataset, variant: str) -> None:
        super().__init__(dataset.records, dataset.image_size)
        self.variant = variant

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str, str]:
        record = self.records[index]
        return VARIANTS[self.variant](record.image, self.image_size), record.long_caption, record.short_caption, ""


# --- measurements -----------------------------------------------------------------------------------------------------


def loader_rate(dataset: CaptionDataset, batch_size: int, workers: int, timed_rounds: int) -> float:
    """Samples/s of the trainer's DataLoader in a first epoch (its persistent workers change nothing there). With
    ``w`` workers, the first ``w`` batches (one a worker, made in parallel while they start) only start the clock;
    then ``timed_rounds`` batches a worker are timed."""
    per_round = max(workers, 1)
    sampler = ResumableSampler(len(dataset), batch_size, seed=0)
    batches = per_round * (timed_rounds + 1)
    if sampler.batches_per_epoch < batches:
        raise ValueError(f"{len(dataset)} samples: too few for {batches} batches of {batch_size}")
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=CaptionCollator(CONTEXT_LENGTH), pin_memory=torch.cuda.is_available(), drop_last=True,
    )
    iterator = iter(loader)
    for _ in range(per_round):
        next(iterator)
    start = time.perf_counter()
    for _ in range(per_round * timed_rounds):
        next(iterator)
    seconds = time.perf_counter() - start
    del iterator  # stops the workers
    return per_round * timed_rounds * batch_size / seconds


def seconds_each(function: Callable, items: list) -> list[float]:
    times = []
    for item in items:
        start = time.perf_counter()
        function(item)
        times.append(time.perf_counter() - start)
    return times


def piece_times(paths: list[str], captions: list[tuple[str, str]], batch_size: int) -> dict[str, list[float]]:
    """Seconds a sample for each piece and variant, one pass: a time an image (a batch for tokenizing and collating).
    The variants take turns image by image, each image in a different order, so that bursts of load touch all alike."""
    decoded = [open_image(path, IMAGE_SIZE) for path in paths]
    times = {
        "decode only (open_image(path, 224))": seconds_each(lambda path: open_image(path, IMAGE_SIZE), paths),
        "preprocess only (preprocess_image)": seconds_each(lambda image: preprocess_image(image, IMAGE_SIZE), decoded),
    }
    names = list(VARIANTS)
    times.update({name: [] for name in names})
    for index, path in enumerate(paths):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            VARIANTS[name](path, IMAGE_SIZE)
            times[name].append(time.perf_counter() - start)
    longs, shorts = zip(*captions[:batch_size])
    collator = CaptionCollator(CONTEXT_LENGTH)
    for name in ("tokenize long + short, first sight", "tokenize long + short, cached"):
        start = time.perf_counter()
        collator.tokenize(longs)
        collator.tokenize(shorts)
        times[name] = [(time.perf_counter() - start) / batch_size]
    pixels = [preprocess_image(decoded[i % len(decoded)], IMAGE_SIZE) for i in range(batch_size)]
    with mock.patch("torch.utils.data.get_worker_info", return_value=object()):  # default_collate's worker branch
        for name, function in (
            ("collate images in a worker: default_collate, into shared memory", lambda: default_collate(pixels)),
            ("before 7874607: torch.stack, then the queue's copy into shared memory",
             lambda: torch.stack(pixels).share_memory_()),
        ):
            start = time.perf_counter()
            function()
            times[name] = [(time.perf_counter() - start) / batch_size]
    return times


def differences(paths: list[str]) -> dict[str, tuple[float, float]]:
    """Max and mean absolute difference from the reference path's tensors, CLIP-normalised units, over ``paths``."""
    reference = [VARIANTS["reference"](path, IMAGE_SIZE) for path in paths]
    variants = {name: variant for name, variant in VARIANTS.items() if name != "reference"}
    variants[YARDSTICK] = lambda path, size: preprocess_reference(resaved_jpeg(path), size)
    result = {}
    for name, variant in variants.items():
        gaps = torch.stack([(variant(path, IMAGE_SIZE) - ref).abs() for path, ref in zip(paths, reference)])
        result[name] = (gaps.max().item(), gaps.mean().item())
    return result


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor() or "CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", nargs="+", default=list(SIZE_CLASSES), choices=list(SIZE_CLASSES))
    parser.add_argument("--workers", nargs="*", type=int, default=[0, 1, 2],
                        help="DataLoader num_workers counts (none: pieces only)")
    parser.add_argument("--loader-variants", nargs="*", default=LOADER_VARIANTS, choices=list(VARIANTS)[1:],
                        help="variants that also get loader rows (default: %(default)s)", metavar="VARIANT")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--timed-rounds", type=int, default=2, help="timed batches a worker in each loader run")
    parser.add_argument("--repeats", type=int, default=3,
                        help="loader runs and passes over the pieces; medians: over runs (loader), images (pieces)")
    parser.add_argument("--images", type=int, default=24, help="distinct image files a class (samples cycle over them)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    batches = max([*args.workers, 1]) * (args.timed_rounds + 1)
    loaders = ["library", *args.loader_variants] if args.workers else []
    rates: dict[tuple[str, str, int], list[float]] = {}
    pieces: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        data = {name: write_data(Path(folder), name, args.images, batches * args.batch_size, seed)
                for seed, name in enumerate(args.classes)}
        datasets = {name: load_dataset([str(path)], IMAGE_SIZE) for name, path in data.items()}
        paths = {name: sorted(str(p) for p in (Path(folder) / name).glob("*.jpg")) for name in args.classes}
        file_kib = {name: statistics.mean(os.path.getsize(p) for p in paths[name]) / 1024 for name in args.classes}
        captions = {name: [(r.long_caption, r.short_caption) for r in datasets[name].records] for name in args.classes}
        for _ in range(args.repeats):  # interleaved: the machine's load touches every row alike
            for name in args.classes:
                for workers in args.workers:
                    for loader in loaders:
                        dataset = datasets[name] if loader == "library" else VariantDataset(datasets[name], loader)
                        rate = loader_rate(dataset, args.batch_size, workers, args.timed_rounds)
                        rates.setdefault((name, loader, workers), []).append(rate)
                for piece, seconds in piece_times(paths[name], captions[name], args.batch_size).items():
                    pieces.setdefault((name, piece), []).extend(seconds)
        gaps = {name: differences(paths[name]) for name in args.classes}
    load_after = os.getloadavg()
    tokens = [len(ids) for ids in token_ids([c for name in args.classes for c, _ in captions[name]])]

    print(f"\n{cpu_name()}, {os.cpu_count()} cores, load average (1 min) {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; batch {args.batch_size}, medians of {args.repeats}; "
          f"pin_memory={torch.cuda.is_available()}; long captions {min(tokens)}-{max(tokens)} tokens "
          f"(mean {statistics.mean(tokens):.0f}); torch {torch.__version__}, Pillow {Image.__version__}")
    print("image files (JPEG q90): " + ", ".join(
        f"{name} {' / '.join('×'.join(map(str, size)) for size in SIZE_CLASSES[name])} {file_kib[name]:.0f} KiB mean"
        for name in args.classes))
    rows = []
    header = " | ".join(args.classes)
    if rates:
        print(f"\n| loader samples/s (decode + preprocess + tokenize + collate) | {header} |")
        print("|---|" + "---|" * len(args.classes))
    for loader in loaders:
        for workers in args.workers:
            medians = {name: statistics.median(rates[(name, loader, workers)]) for name in args.classes}
            label = f"{loader}, num_workers {workers}" + (" (main process)" if workers == 0 else "")
            print(f"| {label} | " + " | ".join(f"{rate:.1f}" for rate in medians.values()) + " |")
            rows += [{"kind": "loader", "variant": loader, "num_workers": workers, "class": name, "samples_per_s": rate,
                      "runs": rates[(name, loader, workers)]} for name, rate in medians.items()]
    print(f"\n| one process, per sample (×: speed-up; diff: vs reference, CLIP-normalised units) | {header} |")
    print("|---|" + "---|" * len(args.classes))
    library = {name: statistics.median(pieces[(name, "library")]) for name in args.classes}
    reference = {name: statistics.median(pieces[(name, "reference")]) for name in args.classes}
    for piece in dict.fromkeys(piece for _, piece in pieces):
        cells = []
        for name in args.classes:
            seconds = statistics.median(pieces[(name, piece)])
            cell = f"{seconds * 1000:.2f} ms ({1 / seconds:.0f}/s)"
            if piece in gaps[name]:
                peak, mean = gaps[name][piece]
                cell += (f", ×{library[name] / seconds:.2f} over library, ×{reference[name] / seconds:.2f} over "
                         f"reference; diff max {peak:.3f} mean {mean:.4f}")
            elif piece == "reference":
                cell += f", ×{library[name] / seconds:.2f} over library"
            cells.append(cell)
            rows.append({"kind": "piece", "piece": piece, "class": name, "ms_per_sample": seconds * 1000,
                         "diff_max_mean": gaps[name].get(piece)})
        print(f"| {piece} | " + " | ".join(cells) + " |")
    print(f"| {YARDSTICK} | " + " | ".join(
        f"diff max {gaps[name][YARDSTICK][0]:.3f} mean {gaps[name][YARDSTICK][1]:.4f}" for name in args.classes) + " |")
    rows += [{"kind": "yardstick", "class": name, "diff_max_mean": gaps[name][YARDSTICK]} for name in args.classes]
    if 1 in args.workers:
        needed = {(name, loader): math.ceil(NEEDED_RATE / statistics.median(rates[(name, loader, 1)]))
                  for loader in loaders for name in args.classes}
        print(f"\nworker processes for {NEEDED_RATE} samples/s, from the 1-worker rate (if cores scale): " + "; ".join(
            f"{loader}: " + ", ".join(f"{name} {needed[(name, loader)]}" for name in args.classes)
            for loader in loaders))
    if args.json:
        with atomic_file(args.json) as path:
            summary = {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "load_average": [load_before, load_after]}
            path.write_text(json.dumps({**summary, "rows": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
