"""Bad input to the ComfyUI nodes, the part checked before ComfyUI builds anything (``comfyui_node/inputs.py``; no
ComfyUI needed). Each case: the node input, what is given, the expected error type and a phrase of its message, or
the sensible result. The same errors through a real ComfyUI: tests/comfyui (scenario ``bad_input``)."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from longclip_diffusion.checkpoints import CheckpointError

REPO = Path(__file__).resolve().parents[2]


def load_by_path(name: str, path: Path):
    """comfyui_node/ is a ComfyUI custom-node folder, not a package here: load single modules from it by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inputs = load_by_path("longclip_comfyui_inputs", REPO / "comfyui_node" / "inputs.py")
tiny_models = load_by_path("longclip_comfyui_tiny_models", REPO / "tests" / "comfyui" / "tiny_models.py")


def t5_dict(width=4096, vocab=8):
    """The keys a T5 v1.1 encoder file has, at a given width (tiny everywhere else)."""
    attention = "encoder.block.0.layer.0.SelfAttention."
    return {
        "shared.weight": torch.randn(vocab, width),
        "encoder.final_layer_norm.weight": torch.ones(width),
        attention + "q.weight": torch.randn(32, width),
        attention + "relative_attention_bias.weight": torch.randn(32, 2),
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": torch.randn(64, width),
    }


class EvilPickle:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-node-input",))


def write(root: Path, name: str, what: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if what == "empty":
        path.write_bytes(b"")
    elif what == "garbage":
        path.write_bytes(b"not a checkpoint " * 20)
    elif what == "evil":
        with open(path, "wb") as handle:
            pickle.dump({"state_dict": EvilPickle()}, handle)
    elif what == "folder":
        path.mkdir()
    elif what.startswith("t5-"):
        save_file(t5_dict(width=int(what[3:])), str(path))
    elif what.startswith("clip-"):  # clip-<width>-<positions>[-noprojection], reference (OpenAI) layout with _res
        width, positions = (int(part) for part in what.split("-")[1:3])
        state_dict = tiny_models.openai_text_state_dict(width=width, layers=2, intermediate=64, positions=positions,
                                                        projection=width, dtype=torch.float32)
        if what.endswith("-noprojection"):
            del state_dict["text_projection"]
        save_file(state_dict, str(path))
    else:
        raise AssertionError(what)


CLIP_L = "clip-768-248"
# (case, file name, what is written there, call, expected error type or None, phrase of the message)
CASES = [
    ("missing file", "longclip-L.pt", None, ("path", "clip_l_name"), FileNotFoundError, "'longclip-L.pt' is not in"),
    ("vanished folder", "LongCLIP-L/", None, ("path", "long_clip_l"), FileNotFoundError, "long_clip_l 'LongCLIP-L/'"),
    ("parent folder", "../secret.safetensors", None, ("path", "clip_g_name"), ValueError, "not a file name inside"),
    ("absolute path", "/etc/passwd", None, ("path", "t5xxl_name"), ValueError, "not a file name inside"),
    ("empty name", "", None, ("path", "clip_name"), ValueError, "clip_name ''"),
    ("zero-byte file", "l.safetensors", "empty", ("clip", "clip_l", "SDXL"), CheckpointError, "l.safetensors: "),
    ("garbage .pt", "l.pt", "garbage", ("clip", "clip_l", "Flux"), CheckpointError, "l.pt: "),
    ("pickled code", "evil.pt", "evil", ("clip", "clip_l", "SD3"), CheckpointError, "evil.pt: "),
    ("T5 as clip_l", "t5.safetensors", "t5-4096", ("clip", "clip_l", "Flux"), CheckpointError,
     "expected a CLIP text encoder"),
    ("folder without config", "folder/", "folder", ("clip", "clip_l", "SDXL"), CheckpointError, "without config.json"),
    ("Long-CLIP-B as SDXL clip_l", "longclip-B.safetensors", "clip-512-248", ("clip", "clip_l", "SDXL"), ValueError,
     "'longclip-B.safetensors' is a 512-wide text encoder; SDXL's clip_l is CLIP-L (768 wide)"),
    ("Long-CLIP-B as Flux clip_l", "longclip-B.safetensors", "clip-512-248", ("clip", "clip_l", "Flux"), ValueError,
     "Flux's clip_l is CLIP-L (768 wide)"),
    ("bigG as SD3 clip_l", "clip_g.safetensors", "clip-1280-77", ("clip", "clip_l", "SD3"), ValueError,
     "1280-wide text encoder; SD3's clip_l"),
    ("CLIP-L as SD3 clip_g", "longclip-L.safetensors", CLIP_L, ("clip", "clip_g", "SD3"), ValueError,
     "768-wide text encoder; SD3's clip_g is CLIP-G/bigG (1280 wide)"),
    ("CLIP-H as SD3 clip_g", "clip_h.safetensors", "clip-1024-77", ("clip", "clip_g", "SD3"), ValueError,
     "1024-wide"),
    ("T5-XL as Flux t5xxl", "t5xl.safetensors", "t5-2048", ("t5", "Flux"), ValueError,
     "2048-wide text encoder; Flux's t5xxl is T5-XXL (4096 wide)"),
    ("CLIP as SD3 t5xxl", "longclip-L.safetensors", CLIP_L, ("t5", "SD3"), CheckpointError, "not a T5 encoder"),
    ("zero-byte T5", "t5.safetensors", "empty", ("t5", "Flux"), CheckpointError, "t5.safetensors: "),
    ("clip_g_mode typo", "window", None, ("choice", "clip_g_mode", ["stretch", "windows"]), ValueError,
     "clip_g_mode must be one of stretch, windows; got 'window'"),
    ("device typo", "cuda:7", None, ("choice", "device", ["default", "cpu"]), ValueError, "default, cpu"),
    ("77-position bigG as long_clip_g", "clip_g.safetensors", "clip-1280-77", ("long_g",), ValueError,
     "long_clip_g 'clip_g.safetensors' has 77 positions; it must have 248, as long_clip_l"),
    ("Long-CLIP-L as long_clip_g", "longclip-L.safetensors", CLIP_L, ("long_g",), ValueError,
     "long_clip_g 'longclip-L.safetensors' is a 768-wide text encoder; SDXL's clip_g is CLIP-G/bigG (1280 wide)"),
    ("long bigG without projection", "longclip-g.safetensors", "clip-1280-248-noprojection", ("long_g",), ValueError,
     "long_clip_g 'longclip-g.safetensors' has no text projection"),
    ("SD3 clip_g without projection", "clip_g.safetensors", "clip-1280-248-noprojection", ("g", "SD3"), ValueError,
     "clip_g_name 'clip_g.safetensors' has no text projection; SD3's pooled vector"),
    # sensible results
    ("file in a subfolder", "longclip/L.safetensors", CLIP_L, ("path", "clip_l_name"), None, "longclip/L.safetensors"),
    ("Long-CLIP-L as SDXL clip_l", "longclip-L.safetensors", CLIP_L, ("clip", "clip_l", "SDXL"), None, "248 rows"),
    ("bigG as SD3 clip_g", "clip_g.safetensors", "clip-1280-77", ("g", "SD3"), None, "77 rows"),
    ("long bigG as long_clip_g", "longclip-g.safetensors", "clip-1280-248", ("long_g",), None, "248 rows"),
    ("T5-XXL for Flux", "t5xxl.safetensors", "t5-4096", ("t5", "Flux"), None, "4096 wide"),
]


def call(kind, root: Path, name: str, *args):
    if kind == "path":
        return inputs.encoder_path(name, [str(root)], args[0])
    if kind == "choice":
        return inputs.check_choice(name, args[1], args[0])
    path = inputs.encoder_path(name, [str(root)], "input")
    if kind == "clip":
        return inputs.read_clip(path, args[0], args[1], f"{args[0]}_name")
    if kind == "g":
        return inputs.read_clip_g(path, args[0], "clip_g_name")
    if kind == "long_g":  # Long-CLIP SDXL's long_clip_g beside a 248-position Long-CLIP-L
        return inputs.read_long_clip_g(path, 248, "long_clip_g")
    return inputs.read_t5(path, args[0], "t5xxl_name")


@pytest.mark.parametrize("case, name, content, how, error, phrase", CASES, ids=[case[0] for case in CASES])
def test_node_input(tmp_path, monkeypatch, case, name, content, how, error, phrase):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "text_encoders"
    root.mkdir()
    if content:
        write(root, name, content)
    if error is not None:
        with pytest.raises(error) as raised:
            call(*how[:1], root, name, *how[1:])
        assert phrase in str(raised.value)
        assert "\n" not in str(raised.value)  # one line
        assert not (tmp_path / "pwned-by-node-input").exists()
        return
    result = call(*how[:1], root, name, *how[1:])
    if how[0] == "path":
        assert result == str(root / name)
    elif how[0] in ("clip", "g", "long_g"):
        table = result["text_model.embeddings.position_embedding.weight"]
        assert f"{table.shape[0]} rows" == phrase
        if how[0] in ("g", "long_g"):
            assert "text_projection.weight" in result  # SDXL's pooled vector is clip_g's projection
        if table.shape[0] == 248:  # the reference table: rows ≥ 20 from positional_embedding_res
            width = table.shape[1]
            reference = tiny_models.openai_text_state_dict(width=width, layers=2, intermediate=64, positions=248,
                                                           projection=width, dtype=torch.float32)
            assert torch.equal(table[20:], reference["positional_embedding_res"][20:])
            assert torch.equal(table[:20], reference["positional_embedding"][:20])
    else:
        assert f"{result['shared.weight'].shape[1]} wide" == phrase


def test_t5_config_is_read_from_the_file(tmp_path):
    """ComfyUI's T5 is built from a fixed T5-XXL config; the nodes read the shapes from the file instead."""
    config = inputs.t5_config(t5_dict(width=4096, vocab=8))
    assert config == {"d_model": 4096, "vocab_size": 8, "num_layers": 1, "num_heads": 2, "d_kv": 16, "d_ff": 64}
