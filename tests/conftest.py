"""Shared fixtures: the official Long-CLIP fixture files and offline settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FIXTURES = Path(os.environ.get("LONGCLIP_FIXTURES", Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"))
REFERENCE_CHECKPOINT = FIXTURES / "longclip-reference-tiny.safetensors"
REFERENCE_OUTPUTS = FIXTURES / "longclip-reference-tiny-outputs.safetensors"
REFERENCE_TEXTS = FIXTURES / "longclip-reference-tiny-outputs.json"


@pytest.fixture(scope="session")
def reference():
    """The official code's outputs on the tiny fixture checkpoint (texts, ids, hidden states, KPS example)."""
    if not REFERENCE_OUTPUTS.exists():
        pytest.skip(f"reference fixtures not found in {FIXTURES} (set LONGCLIP_FIXTURES)")
    from safetensors.torch import load_file

    outputs = load_file(str(REFERENCE_OUTPUTS))
    outputs["texts"] = json.loads(REFERENCE_TEXTS.read_text())["texts"]
    return outputs


@pytest.fixture(scope="session")
def reference_checkpoint() -> Path:
    if not REFERENCE_CHECKPOINT.exists():
        pytest.skip(f"reference checkpoint not found in {FIXTURES} (set LONGCLIP_FIXTURES)")
    return REFERENCE_CHECKPOINT


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run much faster on one thread (no OpenMP synchronisation), above all on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
