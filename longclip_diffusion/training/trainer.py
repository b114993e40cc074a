"""The training loop: DDP (or FSDP) over torchrun/accelerate, mixed precision, checkpoints with exact resume, logging;
both towers, or the text tower alone against cached image features (``text_only``).

Checkpoints: ``checkpoint-latest.pt`` is written atomically and read back before it replaces the previous one, which
is kept as ``checkpoint-previous.pt``; ``resume: auto`` falls back to it (with a warning) when the latest cannot be
read. Data problems met while training (unreadable images, captions cut to the context) are counted, logged and
summarised at the end; more unusable samples than ``max_bad_fraction`` stop the run.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import random
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from transformers import CLIPModel

from ..checkpoints import CheckpointError
from ..files import atomic_file
from .config import TrainConfig
from .data import LOGGED_PROBLEMS, CaptionCollator, ResumableSampler, batches
from .distributed import DistributedContext, all_reduce_mean, all_reduce_sum, current_context
from .feature_cache import (
    CachedFeatureDataset,
    FeatureCollator,
    TextTowerFeatures,
    build_feature_cache,
    freeze_vision_tower,
    vision_modules,
)
from .fsdp import ShardedModel
from .logging_utils import MetricLogger
from .losses import LossOutput, longclip_loss
from .model import LongCLIPFeatures, context_length, prepare_for_training

CHECKPOINT_NAME = "checkpoint-latest.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint-previous.pt"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "world_size", "rng")

logger = logging.getLogger(__name__)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Learning-rate factor: linear warm-up ``(step + 1) / warmup`` then cosine decay to 0 (the reference schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, keys, *rest = state["python"]
    random.setstate((version, tuple(keys), *rest))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def previous_checkpoint_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint-latest.pt`` → ``checkpoint-previous.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem.removesuffix('-latest')}-previous{path.suffix}")


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """The training state in ``path`` (loaded with ``weights_only=True``), checked to be a whole checkpoint of ours.
    ``mmap`` maps the tensors instead of reading them (to check a file cheaply).

    Raises :class:`~longclip_diffusion.checkpoints.CheckpointError` naming the file and what is wrong: missing, empty,
    truncated or not a torch file, holding code, another kind of file (e.g. a CLIP state dict), or keys missing.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; an interrupted write?)")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as error:  # mmap reads only the zip format; let the plain reader say what the file is
            if not (mmap and "mmap can only be used" in str(error)):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # weights_only met a class or function: code we never run
            raise CheckpointError(
                f"refused to unpickle code in {path}: a training checkpoint holds only tensors and plain values; "
                "resume from a checkpoint written by longclip train"
            ) from None
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch file (unpickling failed)") from None
    except Exception as error:  # torch.load raises RuntimeError, EOFError, KeyError… for damaged files
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a torch file ({type(error).__name__}: {_first_sentence(error)})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a longclip training checkpoint")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if len(missing) == len(CHECKPOINT_KEYS):
        found = ", ".join(sorted(map(str, state))[:4]) or "nothing"
        raise CheckpointError(
            f"{path} is not a longclip training checkpoint (found keys like {found}); --resume takes the "
            f"{CHECKPOINT_NAME} a run writes, a model to start from goes in --base-model"
        )
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it is damaged or from another program")
    if not (isinstance(state["step"], int) and isinstance(state["world_size"], int) and isinstance(state["rng"], list)):
        raise CheckpointError(f"checkpoint {path} has a damaged step, world_size or rng entry")
    return state


def _first_sentence(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else "no details"


def read_checkpoint_to_resume(path: str | Path, mmap: bool = False) -> dict:
    """:func:`read_checkpoint` for an explicit ``--resume FILE``: its error also says what to do."""
    try:
        return read_checkpoint(path, mmap)
    except CheckpointError as error:
        raise CheckpointError(
            f"{error}; pass another checkpoint to --resume (a run keeps {PREVIOUS_CHECKPOINT_NAME} beside the "
            "latest) or --resume auto"
        ) from None


class Trainer:
    """Fine-tunes a ``CLIPModel`` into Long-CLIP on ``dataset`` (items ``(pixels, long caption, short caption)``, and
    optionally a fourth, the problem of a replaced sample, as :class:`~.data.CaptionDataset` gives).

    ``model`` is prepared in place (position stretch, frozen rows, logit scale) as ``config`` says. With
    ``config.text_only`` its vision tower is frozen, run once over ``dataset`` into the feature cache and moved to the
    CPU; the steps then run the text tower alone. With ``config.parallel == "fsdp"`` and several processes the trained
    modules are sharded (:mod:`.fsdp`), else wrapped in DDP.
    """

    def __init__(self, config: TrainConfig, model: CLIPModel, dataset: Dataset, context: DistributedContext | None = None) -> None:
        self.config = config
        self.context = context or current_context()
        self.device = torch.device(f"cuda:{self.context.local_rank}" if torch.cuda.is_available() else "cpu")
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
        torch.manual_seed(config.seed)
        self.output_dir = Path(config.output_dir)
        self.model = prepare_for_training(
            model, stretch=config.stretch, keep=config.keep, ratio=config.ratio, logit_scale_init=config.logit_scale_init
        )
        if config.text_only:
            freeze_vision_tower(self.model)
        self.model.to(self.device).train()
        if config.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.context_length = context_length(self.model)
        if config.text_only:
            dataset = self._cached_features(dataset)
            features, collate = TextTowerFeatures(self.model), FeatureCollator(self.context_length)
        else:
            features, collate = LongCLIPFeatures(self.model), CaptionCollator(self.context_length)
        self.sharded = None  # the FSDP state of a sharded run
        if config.parallel == "fsdp" and self.context.enabled:
            self.sharded = ShardedModel(self.model, features, config.precision)
            self.features = self.sharded.features
        else:
            self.features = DistributedDataParallel(features) if self.context.enabled else features
        self.sampler = ResumableSampler(
            len(dataset), config.batch_size, self.context.rank, self.context.world_size, seed=config.seed
        )
        self.loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=config.num_workers > 0,  # kept across epochs, with their token caches
            drop_last=True,
        )
        per_epoch = self.sampler.batches_per_epoch
        self.total_steps = config.max_steps or config.epochs * per_epoch
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
            fused=True,  # one kernel for every parameter's update, the step count read on the device (no host sync)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0
        self.logger = MetricLogger(self.output_dir, enabled=self.context.is_main)
        # data problems met while training, summed over ranks: images replaced, long/short captions cut
        self.data_counts = {"images_replaced": 0, "long_captions_cut": 0, "short_captions_cut": 0}
        self._replaced_this_epoch = 0
        self._latest_is_ours = False  # only a checkpoint this run wrote or resumed from may become the previous one

    def _cached_features(self, dataset: Dataset) -> CachedFeatureDataset:
        """Text-only mode: the image features of ``dataset`` from the cache (computed now where missing); the vision
        tower then goes to the CPU, where it waits for the export."""
        root = self.config.feature_cache or self.output_dir / "feature-cache"
        cache = build_feature_cache(
            self.model, dataset, root, precision=self.config.precision, batch_size=self.config.batch_size,
            num_workers=self.config.num_workers, context=self.context,
        )
        features, problems = cache.load()
        for module in vision_modules(self.model).values():
            module.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return CachedFeatureDataset(dataset, features, problems)

    # ------------------------------------------------------------------------------------------------ one step
    def _autocast(self):
        if self.config.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def compute_loss(self, batch: dict) -> LossOutput:
        """Forward pass and loss for this rank's part of a batch (no backward).

        The collator has trimmed the captions' padding on the host (:func:`~.data.trim_padding`); nothing here reads a
        value back from the device.
        """
        images = "image_features" if self.config.text_only else "pixel_values"
        batch = {key: batch[key].to(self.device, non_blocking=True) for key in (images, "long_ids", "short_ids")}
        short_ids = batch["short_ids"] if self.config.short_loss else None
        with self._autocast():
            image, text_long, text_short, logit_scale = self.features(batch[images], batch["long_ids"], short_ids)
            return longclip_loss(
                image,
                text_long,
                text_short,
                logit_scale,
                pcm=self.config.pcm,
                pcm_components=self.config.pcm_components,
                label_smoothing=self.config.label_smoothing,
            )

    def train_step(self, batch: dict) -> LossOutput:
        """One optimizer step on ``batch``; returns the (detached) losses."""
        loss = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return LossOutput(*(None if t is None else t.detach() for t in loss))

    # ------------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The training state (under FSDP a collective call: rank 0 gets the whole model and optimizer state)."""
        if self.sharded is not None:
            model_state, optimizer_state = self.sharded.state(self.optimizer)
        else:
            model_state, optimizer_state = self.model.state_dict(), self.optimizer.state_dict()
        if self.config.text_only:  # the frozen vision tower is the base model's: not saved again every time
            vision = tuple(f"{name}." for name in vision_modules(self.model))
            model_state = {key: value for key, value in model_state.items() if not key.startswith(vision)}
        return {
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.sampler.batches_per_epoch,
            "batch_in_epoch": self.step % self.sampler.batches_per_epoch,
            "world_size": self.context.world_size,
            "config": asdict(self.config),
            "data_counts": dict(self.data_counts),
            "text_only": self.config.text_only,
            "parallel": "fsdp" if self.sharded is not None else "ddp",
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the full training state (rank 0 writes; every rank contributes its RNG state).

        The new file is written under a temporary name and read back; only then does the current one (if this run
        wrote it or resumed from it) become ``checkpoint-previous.pt`` and the new one take its place.
        """
        path = Path(path) if path else self.output_dir / CHECKPOINT_NAME
        state = self.state_dict()
        rng = [_rng_state()]
        if self.context.enabled:
            rng = [None] * self.context.world_size
            dist.all_gather_object(rng, _rng_state())
        if self.context.is_main:
            with atomic_file(path) as temporary:
                torch.save({**state, "rng": rng}, temporary)
                read_checkpoint(temporary, mmap=True)
                if self._latest_is_ours and path.is_file():
                    os.replace(path, previous_checkpoint_path(path))
            self._latest_is_ours = True
        if self.context.enabled:
            dist.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, scaler, step, RNG and data position from ``path``."""
        self._restore(read_checkpoint(path), Path(path))

    def _restore(self, state: dict, path: Path) -> None:
        if state["world_size"] != self.context.world_size:
            raise ValueError(
                f"checkpoint {path} was written by {state['world_size']} processes, this run has "
                f"{self.context.world_size}; resume with the same number so the data order stays exact"
            )
        written_as = ("text-only" if state.get("text_only") else "full", state.get("parallel", "ddp"))
        running_as = ("text-only" if self.config.text_only else "full", "fsdp" if self.sharded is not None else "ddp")
        if written_as != running_as:
            raise CheckpointError(
                f"checkpoint {path} was written by a {' '.join(written_as)} run, this one is {' '.join(running_as)}; "
                "resume with the same --text-only and --parallel"
            )
        try:
            if self.sharded is not None:
                self.sharded.load_state(self.optimizer, state["model"], state["optimizer"])
            else:
                missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
                frozen = tuple(f"{name}." for name in vision_modules(self.model)) if self.config.text_only else ()
                wrong = unexpected + [key for key in missing if not (frozen and key.startswith(frozen))]
                if wrong:
                    raise ValueError(f"its model keys differ from this run's: {', '.join(wrong[:3])}")
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            _set_rng_state(state["rng"][self.context.rank])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            raise CheckpointError(
                f"checkpoint {path} does not fit this run ({_first_sentence(error)}); resume with the --base-model, "
                "--stretch, --keep and --ratio it was written with"
            ) from None
        self.step = state["step"]
        self.data_counts.update(state.get("data_counts", {}))
        self._latest_is_ours = path.resolve() == (self.output_dir / CHECKPOINT_NAME).resolve()

    def resume(self) -> None:
        """Apply ``config.resume``: a checkpoint file, or ``auto`` (the latest in ``output_dir``, else the previous one,
        else start at step 0). Logs which step it resumed from and from which file."""
        if not self.config.resume:
            return
        if self.config.resume != "auto":
            path = Path(self.config.resume)
            self._restore(read_checkpoint_to_resume(path), path)
        else:
            latest = self.output_dir / CHECKPOINT_NAME
            candidates = [path for path in (latest, previous_checkpoint_path(latest)) if path.exists()]
            if not candidates:
                self._say(f"resume auto: no checkpoint in {self.output_dir}, starting at step 0")
                return
            failures = []
            for path in candidates:
                try:
                    state = read_checkpoint(path)
                except CheckpointError as error:
                    failures.append(str(error))
                    continue
                if failures:
                    self._say(f"{failures[-1]}; falling back to {path} (step {state['step']})", logging.WARNING)
                break
            else:
                raise CheckpointError(
                    f"resume auto: no usable checkpoint in {self.output_dir}: {' / '.join(failures)}. Remove them to "
                    "start afresh, or pass --resume with a good checkpoint"
                )
            self._restore(state, path)
        self._say(f"resumed from step {self.step} ({path})")

    def _say(self, message: str, level: int = logging.INFO) -> None:
        if self.context.is_main:
            logger.log(level, message)

    # ------------------------------------------------------------------------------------------------ loop
    def train(self, stop_at: int | None = None) -> CLIPModel | None:
        """Run (or resume) training to ``total_steps`` — or only to ``stop_at`` (a pre-emptible job's slice; the
        schedule still spans ``total_steps``). Saves a checkpoint at the end; returns the model (rows still split;
        under FSDP gathered whole on rank 0, ``None`` on the other ranks)."""
        self.resume()
        per_epoch = self.sampler.batches_per_epoch
        progress = tqdm(
            total=self.total_steps, initial=self.step, disable=not (self.context.is_main and self.config.progress),
            desc="train", dynamic_ncols=True,
        )
        end = min(self.total_steps, stop_at or self.total_steps)
        while self.step < end:
            self.sampler.set_position(self.step // per_epoch, self.step % per_epoch)
            self._replaced_this_epoch = 0
            for batch in batches(self.loader):
                self._count_data_problems(batch)
                loss = self.train_step(batch)
                progress.update(1)
                if self.step % self.config.log_every == 0 or self.step == self.total_steps:
                    self._log(loss, progress)
                if self.config.save_every and self.step % self.config.save_every == 0:
                    self.save_checkpoint()
                if self.step >= end:
                    break
        progress.close()
        if not (self.config.save_every and self.step % self.config.save_every == 0):
            self.save_checkpoint()
        self.logger.close()
        self._say(self.data_summary())
        if self.sharded is not None:  # the whole model, on rank 0 (None elsewhere)
            return self.sharded.full_model(self.optimizer)
        return self.model

    def _count_data_problems(self, batch: dict) -> None:
        """Add this batch's replaced images and cut captions (summed over ranks); stop when too many are unusable."""
        problems = batch.get("problems", [])
        for problem in problems[: max(0, LOGGED_PROBLEMS - self.data_counts["images_replaced"])]:
            logger.warning("replaced an unreadable sample: %s", problem)
        local = [len(problems), batch.get("long_cut", 0), batch.get("short_cut", 0)]
        # host counts, summed over the CPU backend (gloo): reading them back never waits for the GPU
        replaced, long_cut, short_cut = all_reduce_sum(torch.tensor(local)).tolist()
        if long_cut and not self.data_counts["long_captions_cut"]:
            self._say(
                f"long captions over {self.context_length} tokens are cut to {self.context_length} "
                "(counted; see the summary at the end)", logging.WARNING
            )
        self.data_counts["images_replaced"] += replaced
        self.data_counts["long_captions_cut"] += long_cut
        self.data_counts["short_captions_cut"] += short_cut
        self._replaced_this_epoch += replaced
        dataset = self.loader.dataset
        total = getattr(dataset, "total", len(dataset))
        bad = len(getattr(dataset, "skipped", ())) + self._replaced_this_epoch
        if bad > self.config.max_bad_fraction * total:
            raise ValueError(
                f"{bad} of {total} samples cannot be used ({self._replaced_this_epoch} unreadable images this epoch, "
                f"{bad - self._replaced_this_epoch} skipped when the data was read), more than --max-bad-fraction "
                f"{self.config.max_bad_fraction:g} allows; first unreadable: {problems[0] if problems else 'on another process'}"
            )

    def data_summary(self) -> str:
        """One line: samples skipped when reading, images replaced and captions cut while training."""
        dataset = self.loader.dataset
        skipped = len(getattr(dataset, "skipped", ()))
        total = getattr(dataset, "total", len(dataset))
        seen = self.step * self.config.batch_size * self.context.world_size
        counts = self.data_counts
        return (
            f"data: {skipped} of {total} samples skipped when read, {counts['images_replaced']} unreadable images "
            f"replaced; {counts['long_captions_cut']} long and {counts['short_captions_cut']} short captions of "
            f"{seen} seen were longer than {self.context_length} tokens and cut"
        )

    def _log(self, loss: LossOutput, progress: tqdm) -> None:
        metrics = {"loss": all_reduce_mean(loss.total).item(), "loss_long": all_reduce_mean(loss.long).item()}
        if loss.short is not None:
            metrics["loss_short"] = all_reduce_mean(loss.short).item()
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        scale = self.model.logit_scale.detach()
        scale = scale.full_tensor() if hasattr(scale, "full_tensor") else scale  # sharded under FSDP: a collective
        metrics["logit_scale"] = scale.exp().item()
        metrics.update(self.data_counts)
        self.logger.log(self.step, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}")


def run_training(config: TrainConfig) -> dict[str, Path]:
    """Everything ``longclip train`` does: join the process group, load the base model and data, train, export.

    Returns the exported paths (empty on ranks other than 0).
    """
    from .. import checkpoints
    from .config import save_config
    from .data import load_dataset
    from .distributed import init_distributed, shutdown_distributed
    from .export import check_export_destination, export_model

    # everything that can be checked cheaply comes before the model is loaded
    config.check_inputs()
    if config.resume not in ("", "auto"):
        read_checkpoint_to_resume(config.resume, mmap=True)
    export_dir = Path(config.output_dir) / "export"
    check_export_destination(export_dir, config.export)
    dataset = load_dataset(  # the image size is the model's, set once it is read
        config.train_data, 0, config.data_format, config.image_root, config.skip_first, config.max_bad_fraction
    )
    context = init_distributed()
    model = checkpoints.load_clip_model(config.base_model, hidden_act=config.hidden_act)
    dataset.image_size = model.config.vision_config.image_size
    trainer = Trainer(config, model, dataset, context)
    if context.is_main:
        trainer.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, trainer.output_dir / "config.yaml")
    trained = trainer.train()
    del trainer  # its DDP reducer holds the process group; free it before the group goes
    written = export_model(trained.to("cpu"), export_dir, config.export) if context.is_main else {}
    shutdown_distributed()
    return written
