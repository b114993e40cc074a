"""Knowledge-preserving stretching (KPS) of CLIP's absolute position table.

Long-CLIP (arXiv 2403.15378) keeps the first ``keep`` rows of a 77-row table, which CLIP trained well, and
interpolates the remaining rows ``ratio``-fold. For 77 rows, keep 20 and ratio 4 this gives
20 + 57·4 = 248 positions. With ``pe`` the original table of ``n`` rows::

    new[i]                      = pe[i]                                         for i < keep
    new[keep + ratio·j + k]     = ((ratio − k)·pe[keep + j] + k·pe[keep + j + 1]) / ratio   for j < n − keep − 1
    new[keep + ratio·(n−keep−1) + k] = pe[n − 1] + k·(pe[n − 1] − pe[n − 2]) / ratio     (the last rows extrapolate)

with k in 0 … ratio − 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CLIP_POSITIONS = 77  # what CLIP was trained with; KPS stretches this table (to 248 with the defaults)


@dataclass(frozen=True)
class StretchConfig:
    """How a position table is stretched: ``keep`` rows copied, the rest interpolated ``ratio``-fold."""

    keep: int = 20
    ratio: int = 4

    def stretched_length(self, num_positions: int) -> int:
        """Length of a stretched table (248 for CLIP's 77 with the defaults)."""
        return self.keep + (num_positions - self.keep) * self.ratio


def stretch_positions(table: torch.Tensor, keep: int = 20, ratio: int = 4) -> torch.Tensor:
    """Stretch a ``[num_positions, width]`` table with KPS, exactly as the reference Long-CLIP code."""
    num_positions = table.shape[0]
    if table.ndim != 2:
        raise ValueError(f"A position table is 2-D [positions, width]; got shape {tuple(table.shape)}.")
    if num_positions > CLIP_POSITIONS:
        raise ValueError(
            f"The position table already has {num_positions} positions; KPS stretches a {CLIP_POSITIONS}-position "
            "CLIP. This encoder is already long: use it as it is."
        )
    if not 0 <= keep <= num_positions - 2:
        raise ValueError(f"`keep` must be between 0 and {num_positions - 2} for a {num_positions}-row table; got {keep}.")
    if ratio < 1:
        raise ValueError(f"`ratio` must be a positive integer; got {ratio}.")

    source = table.to(torch.promote_types(table.dtype, torch.float32))
    steps = torch.arange(ratio, dtype=source.dtype, device=source.device).view(1, ratio, 1)
    left, right = source[keep:-1].unsqueeze(1), source[keep + 1 :].unsqueeze(1)
    interpolated = ((ratio - steps) * left + steps * right) / ratio
    last, before_last = source[-1], source[-2]
    extrapolated = last + steps[0] * (last - before_last) / ratio
    stretched = torch.cat([source[:keep], interpolated.flatten(0, 1), extrapolated])
    return stretched.to(table.dtype)


def position_embedding(module: nn.Module) -> nn.Embedding:
    """The text position table of any transformers CLIP model, found by name whatever the wrapper."""
    for name, child in module.named_modules():
        if name.endswith("position_embedding") and "vision" not in name and isinstance(child, nn.Embedding):
            return child
    raise ValueError(f"No text `position_embedding` found in {type(module).__name__}; is it a CLIP text model?")


def reset_position_ids(model: nn.Module) -> nn.Module:
    """Make every ``position_ids`` buffer ``arange`` over its own position table (after the table changed length)."""
    for module in model.modules():
        table = getattr(module, "position_embedding", None)
        if isinstance(getattr(module, "position_ids", None), torch.Tensor) and isinstance(table, nn.Embedding):
            position_ids = torch.arange(table.num_embeddings, device=table.weight.device).unsqueeze(0)
            module.register_buffer("position_ids", position_ids, persistent=False)
    return model


def stretch_text_encoder(text_encoder: nn.Module, keep: int = 20, ratio: int = 4) -> nn.Module:
    """Stretch a transformers CLIP text encoder in place; config, table and ``position_ids`` stay consistent.

    Only a 77-position CLIP is stretched: an encoder that is already long (e.g. Long-CLIP's 248) is refused.
    """
    table = position_embedding(text_encoder)
    stretched = stretch_positions(table.weight.data, keep=keep, ratio=ratio)
    num_positions = stretched.shape[0]
    table.weight = nn.Parameter(stretched, requires_grad=table.weight.requires_grad)
    table.num_embeddings = num_positions
    reset_position_ids(text_encoder)

    config = text_encoder.config
    text_config = getattr(config, "text_config", config)
    text_config.max_position_embeddings = num_positions
    return text_encoder
