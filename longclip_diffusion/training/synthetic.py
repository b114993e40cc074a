"""A synthetic world for proving Long-CLIP training offline: flat drawings of coloured shapes with long captions.

Scenes come in groups that share a background and several small "secondary" shapes; within a group only the large
main shape differs. The long caption describes the background and every secondary shape first and the main shape
last, so for scenes with many shapes the information that tells group members apart sits past token 77. The short
caption names only the main shape.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from transformers import CLIPConfig, CLIPModel

from .data import preprocess_image

SHAPES = ("circle", "square", "triangle", "diamond")
SHAPE_DETAILS = {
    "circle": "perfectly round with a smooth edge",
    "square": "with four sharp corners and straight sides",
    "triangle": "with three corners and its tip pointing up",
    "diamond": "standing on one of its corners",
}
COLOURS = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "black": (20, 20, 20),
}
BACKGROUNDS = {"white": (250, 250, 250), "light grey": (185, 185, 185), "beige": (230, 210, 170)}
SIZES = {"small": 0.14, "medium": 0.2, "large": 0.32}  # side length as a fraction of the image
CELLS = (
    "top left", "top centre", "top right",
    "middle left", "centre", "middle right",
    "bottom left", "bottom centre", "bottom right",
)


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    cell: int
    jitter: tuple[float, float] = (0.0, 0.0)

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    secondary: tuple[Shape, ...]
    main: Shape

    def long_caption(self) -> str:
        """Background, every secondary shape, then the main shape (last)."""
        count = len(self.secondary) + 1
        parts = [f"a simple flat drawing of {count} shapes on a plain {self.background} background."]
        for shape in self.secondary:
            parts.append(f"in the {CELLS[shape.cell]} there is a {shape.phrase()}, {SHAPE_DETAILS[shape.shape]}.")
        parts.append(f"the main shape is a {self.main.phrase()} in the {CELLS[self.main.cell]}.")
        return " ".join(parts)

    def short_caption(self) -> str:
        """Only the main shape."""
        return f"a {self.main.phrase()} in the {CELLS[self.main.cell]}."

    def medium_caption(self, rng: random.Random, max_secondary: int = 2) -> str:
        """Pre-training caption (fits in 77 tokens): main shape first, then up to ``max_secondary`` others."""
        chosen = rng.sample(self.secondary, min(len(self.secondary), rng.randint(0, max_secondary)))
        parts = [f"a {self.main.phrase()} in the {CELLS[self.main.cell]} on a {self.background} background."]
        parts += [f"in the {CELLS[s.cell]} there is a {s.phrase()}." for s in chosen]
        return " ".join(parts)

    def render(self, size: int = 64) -> Image.Image:
        image = Image.new("RGB", (size, size), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        for shape in (*self.secondary, self.main):
            _draw(draw, shape, size)
        return image


def _draw(draw: ImageDraw.ImageDraw, shape: Shape, size: int) -> None:
    cell = size / 3
    cx = (shape.cell % 3 + 0.5 + shape.jitter[0]) * cell
    cy = (shape.cell // 3 + 0.5 + shape.jitter[1]) * cell
    r = SIZES[shape.size] * size / 2
    colour = COLOURS[shape.colour]
    if shape.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape.shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    else:
        draw.polygon([(cx, cy - r * 1.2), (cx + r * 1.2, cy), (cx, cy + r * 1.2), (cx - r * 1.2, cy)], fill=colour)


def make_scenes(count: int, seed: int = 0, group_size: int = 4, min_secondary: int = 2, max_secondary: int = 7) -> list[Scene]:
    """``count`` scenes in groups of ``group_size`` sharing background and secondary shapes, differing in the main one."""
    rng = random.Random(seed)
    scenes: list[Scene] = []
    while len(scenes) < count:
        background = rng.choice(list(BACKGROUNDS))
        cells = rng.sample(range(9), 9)
        n_secondary = rng.randint(min_secondary, max_secondary)
        secondary = tuple(
            Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(("small", "medium")), cell, _jitter(rng))
            for cell in sorted(cells[:n_secondary])
        )
        free = cells[n_secondary:]
        kinds = rng.sample([(s, c) for s in SHAPES for c in COLOURS], group_size)
        for shape, colour in kinds:
            main = Shape(shape, colour, "large", rng.choice(free), _jitter(rng, 0.05))
            scenes.append(Scene(background, secondary, main))
    return scenes[:count]


def _jitter(rng: random.Random, amount: float = 0.12) -> tuple[float, float]:
    return (rng.uniform(-amount, amount), rng.uniform(-amount, amount))


class SyntheticDataset(Dataset):
    """Scenes → ``(pixels, caption, short caption)``; ``caption`` is ``"long"`` or ``"medium"`` (pre-training)."""

    def __init__(self, scenes: list[Scene], image_size: int = 64, caption: str = "long", seed: int = 0) -> None:
        if caption not in ("long", "medium"):
            raise ValueError(f"caption must be 'long' or 'medium', got {caption!r}")
        self.scenes, self.image_size, self.caption, self.seed = scenes, image_size, caption, seed

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        scene = self.scenes[index]
        pixels = preprocess_image(scene.render(self.image_size), self.image_size)
        if self.caption == "long":
            text = scene.long_caption()
        else:
            text = scene.medium_caption(random.Random(self.seed * 1_000_003 + index))
        return pixels, text, scene.short_caption()


def write_dataset(directory: str | Path, scenes: list[Scene], image_size: int = 64) -> Path:
    """Write PNGs and a ``data.jsonl`` (``image``, ``long_caption``, ``short_caption``); returns the JSONL path."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, scene in enumerate(scenes):
        name = f"images/{index:06d}.png"
        scene.render(image_size).save(directory / name)
        lines.append(json.dumps({"image": name, "long_caption": scene.long_caption(), "short_caption": scene.short_caption()}))
    path = directory / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_clip(max_positions: int = 77, image_size: int = 64, width: int = 64, layers: int = 2, seed: int = 0) -> CLIPModel:
    """A randomly initialised tiny two-tower ``CLIPModel`` with the real CLIP vocabulary and token ids.

    Heads are ``width // 64`` as in OpenAI CLIP, so the reference layout (which infers heads that way) reads it back.
    """
    if width % 64:
        raise ValueError(f"width must be a multiple of 64 (OpenAI CLIP has width // 64 heads), got {width}")
    torch.manual_seed(seed)
    text = dict(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=width // 64, max_position_embeddings=max_positions,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0, hidden_act="quick_gelu",
    )
    vision = dict(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=width // 64, image_size=image_size, patch_size=8, hidden_act="quick_gelu",
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=width))
