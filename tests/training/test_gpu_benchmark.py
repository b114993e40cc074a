"""The FLOP count behind ``benchmarks/gpu_train.py``'s share of the matmul rate, checked against PyTorch's own counter.

The GPU script cannot run here; what decides its headline figure (model FLOPs a sample, the fixed caption lengths)
can: :class:`torch.utils.flop_counter.FlopCounterMode` counts every matrix multiply of a real forward and backward.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from longclip_diffusion.training import synthetic
from longclip_diffusion.training.data import CaptionCollator
from longclip_diffusion.training.feature_cache import TextTowerFeatures
from longclip_diffusion.training.model import LongCLIPFeatures, prepare_for_training

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_train


@pytest.mark.parametrize("text_only", [False, True], ids=["full", "text-only"])
def test_step_flops_match_pytorch_flop_counter(text_only):
    model = prepare_for_training(synthetic.tiny_clip(image_size=32, width=128, layers=2), stretch="kps")
    model.set_attn_implementation("eager")  # matrix multiplies the counter sees (SDPA on CPU is one opaque kernel)
    batch_size = 3
    batch = CaptionCollator(248)([gpu_train.FixedLengthCaptions(batch_size, 32)[i] for i in range(batch_size)])
    assert (batch["long_ids"].shape[1], batch["short_ids"].shape[1]) == (gpu_train.LONG_TOKENS, gpu_train.SHORT_TOKENS)
    features = TextTowerFeatures(model) if text_only else LongCLIPFeatures(model)
    images = torch.randn(batch_size, 128) if text_only else batch["pixel_values"].requires_grad_()  # dx of the patch conv too
    with FlopCounterMode(display=False) as counter:
        image, long_text, short_text, _ = features(images, batch["long_ids"], batch["short_ids"])
        (image.sum() + long_text.sum() + short_text.sum()).backward()
    assert gpu_train.step_flops(model, text_only) * batch_size == counter.get_total_flops()
