"""Fully sharded data parallelism (PyTorch FSDP2, ``fully_shard``) for runs whose weights, gradients and AdamW state
do not fit one GPU under DDP (bigG with both towers: ≈ 2.5 B parameters, ≈ 40 GB of fp32 weights + gradients +
AdamW moments per GPU).

Every encoder layer of the trained towers is its own FSDP unit, the feature module is the root unit: parameters,
gradients and optimizer state are sharded over the processes, each layer's weights are all-gathered just before it
runs and freed after. ``bf16`` keeps fp32 master weights and computes in bf16 (``MixedPrecisionPolicy``: bf16
parameters, fp32 gradient reduction). Activation checkpointing is the config's ``gradient_checkpointing``.

The loss is the same as under DDP (features all-gathered with gradients; FSDP averages gradients over processes as
DDP does), so one sharded step equals one unsharded step on the whole global batch (tested with two CPU processes).

Checkpoints hold the *full* (unsharded) model and optimizer state, gathered on rank 0 (offloaded to CPU one tensor at
a time) and written in the same single-file format as DDP runs; every rank reads that file back and keeps its own
shard. So a checkpoint does not depend on the sharding itself, but the trainer still refuses to resume with another
number of processes (the data order would change).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import CLIPModel

LOGIT_SCALE = "logit_scale"


def encoder_layers(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of every tower inside ``module`` (the FSDP units below the root)."""
    layers: list[nn.Module] = []
    for name, child in module.named_modules():
        if name.endswith("encoder.layers") and isinstance(child, nn.ModuleList):
            layers.extend(child)
    return layers


class ShardedModel:
    """``features`` (a module holding the trained parts of ``model``) sharded with FSDP, and what it takes to get the
    whole model back: a parameter-free copy of ``model`` on the meta device and its (small) buffers."""

    def __init__(self, model: CLIPModel, features: nn.Module, precision: str = "fp32") -> None:
        # FSDP shards along dim 0 and refuses 0-d parameters: CLIP's logit scale becomes a [1] tensor while sharded
        model.logit_scale = nn.Parameter(model.logit_scale.detach().reshape(1), model.logit_scale.requires_grad)
        if hasattr(features, LOGIT_SCALE):
            features.logit_scale = model.logit_scale
        self.model = model
        persistent = model.state_dict().keys()
        self._unsaved_buffers = {  # position ids: in no state dict, so kept here (they are small)
            name: buffer.detach().to("cpu", copy=True) for name, buffer in model.named_buffers() if name not in persistent
        }
        # a copy of the structure only: every tensor on the meta device (no memory), not a copy of the weights
        meta = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
        meta.update({id(b): torch.empty_like(b, device="meta") for b in model.buffers()})
        self._template = copy.deepcopy(model, meta)
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if precision == "bf16" else None, reduce_dtype=torch.float32
        )
        for layer in encoder_layers(features):
            fully_shard(layer, mp_policy=policy)
        self.features = fully_shard(features, mp_policy=policy)
        if hasattr(features, LOGIT_SCALE):  # the sharded scale was registered on the feature module: share it back
            model.logit_scale = features.logit_scale

    def state(self, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """Full model and optimizer state dicts, on the CPU (every rank must call; rank 0 gets them, the others
        empty dicts)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optimizer_state = get_state_dict(self.model, optimizer, options=options)
        if LOGIT_SCALE in model_state:
            model_state[LOGIT_SCALE] = model_state[LOGIT_SCALE].reshape(())
        return model_state, optimizer_state

    def load_state(self, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict) -> None:
        """Restore from full state dicts (as :meth:`state` gives); each rank keeps its own shard."""
        model_state = dict(model_state)
        if LOGIT_SCALE in model_state:
            model_state[LOGIT_SCALE] = model_state[LOGIT_SCALE].reshape(1)
        set_state_dict(
            self.model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
            options=StateDictOptions(full_state_dict=True),
        )

    def full_model(self, optimizer: torch.optim.Optimizer) -> CLIPModel | None:
        """The trained model as an ordinary (unsharded) module on the CPU, on rank 0 (``None`` on the others); a
        collective call on every rank."""
        model_state, _ = self.state(optimizer)
        if not model_state:
            return None
        whole = copy.deepcopy(self._template).to_empty(device="cpu")
        whole.logit_scale = nn.Parameter(torch.empty(()))
        missing, unexpected = whole.load_state_dict(model_state, strict=False)
        if unexpected or set(missing) - set(self._unsaved_buffers):
            raise RuntimeError(f"sharded state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for name, buffer in self._unsaved_buffers.items():
            module_name, _, buffer_name = name.rpartition(".")
            whole.get_submodule(module_name).register_buffer(buffer_name, buffer.clone(), persistent=False)
        return whole
