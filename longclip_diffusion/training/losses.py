"""Long-CLIP objective: InfoNCE on long captions plus InfoNCE on short captions against PCM'd image features."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .distributed import current_context, gather_with_grad


def principal_component_matching(features: torch.Tensor, components: int = 32) -> torch.Tensor:
    """Keep the top ``components`` principal components of a batch of features (the reference ``PCA``).

    Centre the rows, take the SVD in fp32, project onto the first ``components`` right singular vectors, project back
    and add the mean. No re-normalisation. With ``rows <= components + 1`` this is the identity (rank of the centred
    batch is at most ``rows - 1``).
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        x = features.float()
        mean = x.mean(dim=0, keepdim=True)
        centred = x - mean
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        basis = vh[:components].T
        restored = centred @ basis @ basis.T + mean
    return restored.to(features.dtype)


def contrastive_loss(
    queries_image: torch.Tensor,
    queries_text: torch.Tensor,
    all_image: torch.Tensor,
    all_text: torch.Tensor,
    logit_scale: torch.Tensor,
    offset: int,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """Symmetric InfoNCE of this rank's rows against the gathered batch.

    ``queries_*`` are this rank's normalised features, ``all_*`` the features of the whole (global) batch, and
    ``offset`` the index of this rank's first row in the global batch. Returns (CE(i→t) + CE(t→i)) / 2.
    """
    scale = logit_scale.exp()
    targets = torch.arange(offset, offset + queries_image.shape[0], device=queries_image.device)
    logits_i2t = scale * queries_image.float() @ all_text.float().T
    logits_t2i = scale * queries_text.float() @ all_image.float().T
    return (
        F.cross_entropy(logits_i2t, targets, label_smoothing=label_smoothing)
        + F.cross_entropy(logits_t2i, targets, label_smoothing=label_smoothing)
    ) / 2


class LossOutput(NamedTuple):
    total: torch.Tensor
    long: torch.Tensor
    short: torch.Tensor | None


def longclip_loss(
    image: torch.Tensor,
    text_long: torch.Tensor,
    text_short: torch.Tensor | None,
    logit_scale: torch.Tensor,
    *,
    pcm: str = "local",
    pcm_components: int = 32,
    label_smoothing: float = 0.1,
) -> LossOutput:
    """Long-CLIP loss for this rank's batch of L2-normalised features.

    ``pcm``: ``"local"`` applies principal-component matching to this rank's batch (the reference; an identity when a
    rank holds ``<= pcm_components + 1`` samples), ``"global"`` to the batch gathered from all ranks, ``"none"`` skips
    it. ``text_short=None`` drops the short-caption term (the long-caption-only ablation).
    Gradients flow through the gather, so with DDP's gradient averaging the result equals one process holding the
    whole global batch (for ``pcm`` ``"global"``/``"none"``).
    """
    context = current_context()
    offset = context.rank * image.shape[0]
    all_image = gather_with_grad(image)
    loss_long = contrastive_loss(
        image, text_long, all_image, gather_with_grad(text_long), logit_scale, offset, label_smoothing
    )
    if text_short is None:
        return LossOutput(loss_long, loss_long, None)
    if pcm == "local":
        short_image = principal_component_matching(image, pcm_components)
        all_short_image = gather_with_grad(short_image)
    elif pcm == "global":
        all_short_image = principal_component_matching(all_image, pcm_components)
        short_image = all_short_image[offset : offset + image.shape[0]]
    else:
        short_image, all_short_image = image, all_image
    loss_short = contrastive_loss(
        short_image, text_short, all_short_image, gather_with_grad(text_short), logit_scale, offset, label_smoothing
    )
    return LossOutput(loss_long + loss_short, loss_long, loss_short)
