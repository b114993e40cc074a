"""Training configuration: one dataclass, loadable from YAML or TOML and overridable by command-line flags.

Every value is checked when the config is built (type, range, allowed choices); a bad one raises
:class:`ConfigError` naming the option. :func:`load_config` renames it the way the user wrote it: ``--data-format``
for a flag, ``data_format (in run.yaml)`` for a key of the config file.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STRETCH_METHODS = ("kps", "interpolate", "none")
PCM_MODES = ("local", "global", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
DATA_FORMATS = ("auto", "sharegpt4v", "jsonl", "json", "csv", "tar")
EXPORT_FORMATS = ("openai", "diffusers", "transformers", "comfy", "sdxl", "comfy_g")
PARALLEL_MODES = ("ddp", "fsdp")
ACTIVATIONS = ("auto", "gelu", "quick_gelu")


class ConfigError(ValueError):
    """A bad option value; ``key`` is the option's field name, ``problem`` what is wrong with it."""

    def __init__(self, key: str, problem: str, where: str | None = None) -> None:
        super().__init__(f"{where or key}: {problem}")
        self.key, self.problem = key, problem


def flag_name(key: str) -> str:
    """The command-line spelling of an option: ``data_format`` → ``--data-format``."""
    return "--" + key.replace("_", "-")


@dataclass
class TrainConfig:
    """Every decision of a Long-CLIP fine-tuning run. Defaults follow the reference recipe."""

    # model
    base_model: str = ""
    stretch: str = "kps"
    keep: int = 20
    ratio: int = 4
    logit_scale_init: float | None = math.log(100.0)
    hidden_act: str = "auto"
    text_only: bool = False
    feature_cache: str = ""
    # data
    train_data: list[str] = field(default_factory=list)
    data_format: str = "auto"
    image_root: str = ""
    skip_first: int = 0
    num_workers: int = 4
    max_bad_fraction: float = 0.01
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
    parallel: str = "ddp"
    seed: int = 0
    # output
    output_dir: str = "longclip-run"
    save_every: int = 500
    log_every: int = 10
    resume: str = ""
    export: list[str] = field(default_factory=lambda: ["openai", "diffusers", "transformers", "comfy"])
    progress: bool = True

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for option in dataclasses.fields(self):
            setattr(self, option.name, _checked_type(option.name, getattr(self, option.name), hints[option.name]))
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if isinstance(self.export, str):
            self.export = [part.strip() for part in self.export.split(",") if part.strip()]
        for name, allowed in (
            ("stretch", STRETCH_METHODS),
            ("pcm", PCM_MODES),
            ("precision", PRECISIONS),
            ("data_format", DATA_FORMATS),
            ("parallel", PARALLEL_MODES),
            ("hidden_act", ACTIVATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for value in self.export:
            if value not in EXPORT_FORMATS:
                raise ConfigError("export", f"{value!r} is not one of {', '.join(EXPORT_FORMATS)}")
        for name, low in (
            ("batch_size", 1), ("pcm_components", 1), ("epochs", 1), ("ratio", 1), ("log_every", 1), ("keep", 0),
            ("max_steps", 0), ("warmup_steps", 0), ("save_every", 0), ("num_workers", 0), ("skip_first", 0),
        ):
            if getattr(self, name) < low:
                raise ConfigError(name, f"must be at least {low}, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", f"must be a positive number, got {self.lr}")
        for name, bounds, ok in (  # written so that NaN fails too
            ("label_smoothing", "in [0, 1)", 0 <= self.label_smoothing < 1),
            ("beta1", "in [0, 1)", 0 <= self.beta1 < 1),
            ("beta2", "in [0, 1)", 0 <= self.beta2 < 1),
            ("max_bad_fraction", "from 0 to 1", 0 <= self.max_bad_fraction <= 1),
            ("weight_decay", "0 or more", self.weight_decay >= 0),
        ):
            if not ok:
                raise ConfigError(name, f"must be {bounds}, got {getattr(self, name)}")
        if self.logit_scale_init is not None and not math.isfinite(self.logit_scale_init):
            raise ConfigError("logit_scale_init", f"must be a finite number, got {self.logit_scale_init}")
        if not self.output_dir.strip():
            raise ConfigError("output_dir", "is empty; give the folder the run writes to")

    def check_inputs(self) -> None:
        """What a training run needs before anything is loaded: a base model and data files that exist."""
        if not self.base_model:
            raise ConfigError("base_model", "not given; set it to an OpenAI/Long-CLIP file or a transformers CLIP folder")
        if not self.train_data:
            raise ConfigError("train_data", "not given; set it to JSON/JSONL/CSV files or .tar shards")
        for path in self.train_data:
            if not Path(path).exists():
                raise ConfigError("train_data", f"data file {path} does not exist")
        if self.resume not in ("", "auto") and not Path(self.resume).is_file():
            raise ConfigError("resume", f"checkpoint {self.resume} does not exist; use 'auto' to resume only when one exists")


def _checked_type(name: str, value: Any, kind: Any) -> Any:
    """``value`` if it fits the field's type (a string holding a number is read as one for float fields)."""
    if typing.get_origin(kind) is list:
        base = list
    elif value is None and type(None) in typing.get_args(kind):
        return None
    else:
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    if base is bool:
        ok = isinstance(value, bool)
        expected = "true or false"
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "a whole number"
    elif base is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        expected = "a number"
    elif base is str:
        ok = isinstance(value, str)
        expected = "a string"
    else:  # list[str]
        ok = isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
        value = list(value) if ok and not isinstance(value, str) else value
        expected = "a string or a list of strings"
    if not ok:
        raise ConfigError(name, f"expected {expected}, got {value!r} ({type(value).__name__})")
    return value


def config_fields() -> list[dataclasses.Field]:
    """The fields of :class:`TrainConfig`, in declaration order."""
    return list(dataclasses.fields(TrainConfig))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat mapping of config values from a ``.yaml``/``.yml`` or ``.toml`` file."""
    import tomllib

    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.suffix not in (".yaml", ".yml", ".toml"):
        raise ValueError(f"config file {path}: unknown extension {path.suffix!r}; use .yaml, .yml or .toml")
    try:
        text = path.read_text(encoding="utf-8")
        values = (yaml.safe_load(text) or {}) if path.suffix != ".toml" else tomllib.loads(text)
    except (UnicodeDecodeError, yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"config file {path} cannot be parsed: {detail}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path}: expected a mapping of option names to values at the top level")
    known = {f.name for f in config_fields()}
    unknown = sorted(str(key) for key in set(values) - known)
    if unknown:
        raise ValueError(
            f"config file {path}: unknown option(s) {', '.join(unknown)}; known options are {', '.join(sorted(known))}"
        )
    return values


def load_config(path: str | Path | None = None, check_inputs: bool = False, **flags: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from an optional file, then apply the command-line ``flags`` (``None`` = not given).

    An error names the option as the user wrote it: ``--lr`` for a flag, ``lr (in run.yaml)`` for a file key.
    ``check_inputs`` also checks that the base model and data are given and the data files exist.
    """
    from_file: dict[str, Any] = read_config_file(path) if path else {}
    given = {key: value for key, value in flags.items() if value is not None}
    try:
        config = TrainConfig(**{**from_file, **given})
        if check_inputs:
            config.check_inputs()
    except ConfigError as error:
        where = f"{error.key} (in {path})" if error.key in from_file and error.key not in given else flag_name(error.key)
        raise ConfigError(error.key, error.problem, where) from None
    return config


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (used to record what a run was started with)."""
    import yaml

    from ..files import atomic_file

    with atomic_file(path) as temporary:
        temporary.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), encoding="utf-8")
