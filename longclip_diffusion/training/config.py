"""Training configuration: one dataclass, loadable from YAML or TOML and overridable by command-line flags."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STRETCH_METHODS = ("kps", "interpolate", "none")
PCM_MODES = ("local", "global", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
DATA_FORMATS = ("auto", "sharegpt4v", "jsonl", "json", "csv", "tar")
EXPORT_FORMATS = ("openai", "diffusers", "transformers", "comfy")


@dataclass
class TrainConfig:
    """Every decision of a Long-CLIP fine-tuning run. Defaults follow the reference recipe."""

    # model
    base_model: str = ""
    stretch: str = "kps"
    keep: int = 20
    ratio: int = 4
    logit_scale_init: float | None = math.log(100.0)
    # data
    train_data: list[str] = field(default_factory=list)
    data_format: str = "auto"
    image_root: str = ""
    skip_first: int = 0
    num_workers: int = 4
    # loss
    short_loss: bool = True
    pcm: str = "local"
    pcm_components: int = 32
    label_smoothing: float = 0.1
    # optimisation
    batch_size: int = 128
    epochs: int = 1
    max_steps: int = 0
    lr: float = 1e-6
    weight_decay: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 200
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    # output
    output_dir: str = "longclip-run"
    save_every: int = 500
    log_every: int = 10
    resume: str = ""
    export: list[str] = field(default_factory=lambda: ["openai", "diffusers", "transformers", "comfy"])
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if isinstance(self.export, str):
            self.export = [part for part in self.export.split(",") if part]
        checks = (
            ("stretch", self.stretch, STRETCH_METHODS),
            ("pcm", self.pcm, PCM_MODES),
            ("precision", self.precision, PRECISIONS),
            ("data_format", self.data_format, DATA_FORMATS),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"config: {name}={value!r} is not one of {', '.join(allowed)}")
        for value in self.export:
            if value not in EXPORT_FORMATS:
                raise ValueError(f"config: export format {value!r} is not one of {', '.join(EXPORT_FORMATS)}")
        if self.batch_size < 1:
            raise ValueError(f"config: batch_size must be at least 1, got {self.batch_size}")
        if self.pcm_components < 1:
            raise ValueError(f"config: pcm_components must be at least 1, got {self.pcm_components}")


def config_fields() -> list[dataclasses.Field]:
    """The fields of :class:`TrainConfig`, in declaration order."""
    return list(dataclasses.fields(TrainConfig))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat mapping of config values from a ``.yaml``/``.yml`` or ``.toml`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        values = yaml.safe_load(text) or {}
    elif path.suffix == ".toml":
        values = tomllib.loads(text)
    else:
        raise ValueError(f"config file {path}: unknown extension {path.suffix!r}; use .yaml, .yml or .toml")
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: expected a mapping of option names to values at the top level")
    known = {f.name for f in config_fields()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"config file {path}: unknown option(s) {', '.join(unknown)}; known options are {', '.join(sorted(known))}"
        )
    return values


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from an optional file, then apply ``overrides`` (``None`` values are ignored)."""
    values: dict[str, Any] = read_config_file(path) if path else {}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return TrainConfig(**values)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (used to record what a run was started with)."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), encoding="utf-8")
