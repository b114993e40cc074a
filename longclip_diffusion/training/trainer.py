"""The training loop: DDP over torchrun/accelerate, mixed precision, checkpoints with exact resume, logging."""

from __future__ import annotations

import math
import os
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

from .config import TrainConfig
from .data import CaptionCollator, ResumableSampler
from .distributed import DistributedContext, all_reduce_mean, current_context
from .logging_utils import MetricLogger
from .losses import LossOutput, longclip_loss
from .model import LongCLIPFeatures, context_length, prepare_for_training

CHECKPOINT_NAME = "checkpoint-latest.pt"


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


class Trainer:
    """Fine-tunes a ``CLIPModel`` into Long-CLIP on ``dataset`` (items ``(pixels, long caption, short caption)``).

    ``model`` is prepared in place (position stretch, frozen rows, logit scale) as ``config`` says.
    """

    def __init__(self, config: TrainConfig, model: CLIPModel, dataset: Dataset, context: DistributedContext | None = None) -> None:
        self.config = config
        self.context = context or current_context()
        self.device = torch.device(f"cuda:{self.context.local_rank}" if torch.cuda.is_available() else "cpu")
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
        torch.manual_seed(config.seed)
        self.model = prepare_for_training(
            model, stretch=config.stretch, keep=config.keep, ratio=config.ratio, logit_scale_init=config.logit_scale_init
        ).to(self.device)
        self.model.train()
        if config.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        features = LongCLIPFeatures(self.model)
        self.features = DistributedDataParallel(features) if self.context.enabled else features
        self.context_length = context_length(self.model)
        self.sampler = ResumableSampler(
            len(dataset), config.batch_size, self.context.rank, self.context.world_size, seed=config.seed
        )
        self.loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.num_workers,
            collate_fn=CaptionCollator(self.context_length),
            pin_memory=self.device.type == "cuda",
            drop_last=True,
        )
        batches = self.sampler.batches_per_epoch
        self.total_steps = config.max_steps or config.epochs * batches
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0
        self.output_dir = Path(config.output_dir)
        self.logger = MetricLogger(self.output_dir, enabled=self.context.is_main)

    # ------------------------------------------------------------------------------------------------ one step
    def _autocast(self):
        if self.config.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Forward pass and loss for this rank's part of a batch (no backward)."""
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        short_ids = batch["short_ids"] if self.config.short_loss else None
        with self._autocast():
            image, text_long, text_short, logit_scale = self.features(batch["pixel_values"], batch["long_ids"], short_ids)
            return longclip_loss(
                image,
                text_long,
                text_short,
                logit_scale,
                pcm=self.config.pcm,
                pcm_components=self.config.pcm_components,
                label_smoothing=self.config.label_smoothing,
            )

    def train_step(self, batch: dict[str, torch.Tensor]) -> LossOutput:
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
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.sampler.batches_per_epoch,
            "batch_in_epoch": self.step % self.sampler.batches_per_epoch,
            "world_size": self.context.world_size,
            "config": asdict(self.config),
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the full training state atomically (rank 0 writes; every rank contributes its RNG state)."""
        path = Path(path) if path else self.output_dir / CHECKPOINT_NAME
        rng = [_rng_state()]
        if self.context.enabled:
            rng = [None] * self.context.world_size
            dist.all_gather_object(rng, _rng_state())
        if self.context.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.partial")
            torch.save({**self.state_dict(), "rng": rng}, temporary)
            os.replace(temporary, path)
        if self.context.enabled:
            dist.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, scaler, step, RNG and data position from ``path``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist; pass resume=auto to resume only when one exists")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["world_size"] != self.context.world_size:
            raise ValueError(
                f"checkpoint {path} was written by {state['world_size']} processes, this run has "
                f"{self.context.world_size}; resume with the same number so the data order stays exact"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        _set_rng_state(state["rng"][self.context.rank])

    def _resume_path(self) -> Path | None:
        if not self.config.resume:
            return None
        if self.config.resume == "auto":
            latest = self.output_dir / CHECKPOINT_NAME
            return latest if latest.is_file() else None
        return Path(self.config.resume)

    # ------------------------------------------------------------------------------------------------ loop
    def train(self, stop_at: int | None = None) -> CLIPModel:
        """Run (or resume) training to ``total_steps`` — or only to ``stop_at`` (a pre-emptible job's slice; the
        schedule still spans ``total_steps``). Saves a checkpoint at the end; returns the model (rows still split)."""
        resume = self._resume_path()
        if resume is not None:
            self.load_checkpoint(resume)
        batches = self.sampler.batches_per_epoch
        progress = tqdm(
            total=self.total_steps, initial=self.step, disable=not (self.context.is_main and self.config.progress),
            desc="train", dynamic_ncols=True,
        )
        end = min(self.total_steps, stop_at or self.total_steps)
        while self.step < end:
            self.sampler.set_position(self.step // batches, self.step % batches)
            for batch in self.loader:
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
        return self.model

    def _log(self, loss: LossOutput, progress: tqdm) -> None:
        metrics = {"loss": all_reduce_mean(loss.total).item(), "loss_long": all_reduce_mean(loss.long).item()}
        if loss.short is not None:
            metrics["loss_short"] = all_reduce_mean(loss.short).item()
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["logit_scale"] = self.model.logit_scale.exp().item()
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
    from .export import export_model

    if not config.base_model:
        raise ValueError("no base model given; set base_model (an OpenAI/Long-CLIP file or a transformers CLIP folder)")
    context = init_distributed()
    model = checkpoints.load_clip_model(config.base_model)
    dataset = load_dataset(
        config.train_data, model.config.vision_config.image_size, config.data_format, config.image_root, config.skip_first
    )
    trainer = Trainer(config, model, dataset, context)
    if context.is_main:
        trainer.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, trainer.output_dir / "config.yaml")
    trained = trainer.train()
    export_dir = trainer.output_dir / "export"
    del trainer  # its DDP reducer holds the process group; free it before the group goes
    written = export_model(trained, export_dir, config.export) if context.is_main else {}
    shutdown_distributed()
    return written
