"""Loss and PCM against straightforward numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longclip_diffusion.training.losses import contrastive_loss, longclip_loss, principal_component_matching


def numpy_pcm(x: np.ndarray, k: int) -> np.ndarray:
    mean = x.mean(axis=0)
    centred = x - mean
    # eigenvectors of the covariance, largest first (an independent route to the principal components)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, np.argsort(values)[::-1][:k]]
    return centred @ top @ top.T + mean


def numpy_smoothed_ce(logits: np.ndarray, targets: np.ndarray, smoothing: float) -> float:
    total = 0.0
    n, classes = logits.shape
    for row in range(n):
        shifted = logits[row] - logits[row].max()
        log_probs = shifted - math.log(np.exp(shifted).sum())
        for c in range(classes):
            weight = (1 - smoothing) * (c == targets[row]) + smoothing / classes
            total -= weight * log_probs[c]
    return total / n


def normalised(rows: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=-1)


def test_pcm_matches_numpy_projection():
    x = normalised(40, 16, 0)
    result = principal_component_matching(x.float(), 5).double()
    np.testing.assert_allclose(result.numpy(), numpy_pcm(x.numpy(), 5), atol=1e-5)


def test_pcm_is_identity_for_small_batches():
    """The reference's issue #68: with <= k + 1 rows nothing is removed."""
    x = normalised(33, 64, 1).float()
    torch.testing.assert_close(principal_component_matching(x, 32), x, atol=1e-5, rtol=0)
    assert not torch.allclose(principal_component_matching(normalised(64, 64, 1).float(), 32), normalised(64, 64, 1).float(), atol=1e-3)


def test_contrastive_loss_matches_loops():
    image, text = normalised(6, 8, 2), normalised(6, 8, 3)
    scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    loss = contrastive_loss(image, text, image, text, scale, offset=0, label_smoothing=0.1)
    logits = 20.0 * image.numpy() @ text.numpy().T
    targets = np.arange(6)
    expected = (numpy_smoothed_ce(logits, targets, 0.1) + numpy_smoothed_ce(logits.T, targets, 0.1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("pcm", ["local", "global", "none"])
def test_longclip_loss_is_long_plus_short(pcm):
    image, long, short = normalised(40, 16, 4).float(), normalised(40, 16, 5).float(), normalised(40, 16, 6).float()
    scale = torch.tensor(math.log(100.0))
    out = longclip_loss(image, long, short, scale, pcm=pcm, pcm_components=4)
    short_image = image if pcm == "none" else torch.from_numpy(numpy_pcm(image.double().numpy(), 4)).float()
    logits = 100.0 * short_image.double().numpy() @ short.double().numpy().T
    targets = np.arange(40)
    expected_short = (numpy_smoothed_ce(logits, targets, 0.1) + numpy_smoothed_ce(logits.T, targets, 0.1)) / 2
    assert out.short.item() == pytest.approx(expected_short, rel=1e-4)
    assert out.total.item() == pytest.approx(out.long.item() + out.short.item(), rel=1e-6)


def test_long_only_loss_has_no_short_term():
    image, long = normalised(8, 16, 7).float(), normalised(8, 16, 8).float()
    out = longclip_loss(image, long, None, torch.tensor(0.0))
    assert out.short is None and out.total is out.long
