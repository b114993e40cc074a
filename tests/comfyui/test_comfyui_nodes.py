"""The nodes against a real ComfyUI checkout (skipped without one; see setup_comfyui.sh).

ComfyUI file layout the nodes rely on (found in comfy/sd.py, sd1_clip.py, sdxl_clip.py, text_encoders/long_clipl.py):
a single-file text encoder for CLIPLoader has transformers keys without prefix (``text_model.*``, optional
``text_projection.weight`` [width, width]); ``text_model.encoder.layers.0.mlp.fc1.weight`` without layers 22/30 →
CLIP-L, and the position table's rows set max_position_embeddings (248 → Long-CLIP-L) only if layer 1 exists. Widths
and depth come from ComfyUI's fixed CLIP-L config (768, 12 layers), so only full-size files reload in core CLIPLoader;
OpenAI-layout files are converted by ComfyUI with ``positional_embedding`` for every row (``_res`` dropped).

Run: LONGCLIP_COMFYUI_PATH=/work/comfyui LONGCLIP_COMFYUI_PYTHON=/work/comfyui-venv/bin/python pytest tests/comfyui
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness import REPO, ComfyServer, requires_comfyui, run_worker, write_torchvision_stand_in

WORKFLOWS = REPO / "comfyui_node" / "workflows"
FIXTURE = Path(os.environ.get("LONGCLIP_FIXTURES", REPO.parent / "shared" / "fixtures")) / "longclip-reference-tiny.safetensors"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    requires_comfyui()
    return write_torchvision_stand_in(tmp_path_factory.mktemp("stand-in"))


@pytest.fixture(scope="module")
def results(stand_in, tmp_path_factory):
    """One ComfyUI process runs every in-process scenario (start-up is the slow part)."""
    scenarios = ["nodes", "sd15", "sdxl", "sdxl_windows", "stretch", "token_count", "fidelity"]
    if os.environ.get("LONGCLIP_COMFYUI_FULL_SIZE", "1") != "0":
        scenarios.append("roundtrip")
    found = run_worker(tmp_path_factory.mktemp("comfy-work"), stand_in, *scenarios)
    return found


def result(results, scenario):
    if scenario not in results:
        pytest.skip(f"scenario {scenario} not run (LONGCLIP_COMFYUI_FULL_SIZE=0)")
    assert "error" not in results[scenario], results[scenario]["error"]
    return results[scenario]


def test_package_registers_every_node_through_comfy_entrypoint(results):
    assert set(result(results, "nodes")["nodes"]) == {
        "LongCLIPLoader", "LongCLIPSDXL", "LongCLIPStretchKPS", "LongCLIPPromptTokenCount", "SaveLongCLIP"}


def test_loader_gives_a_managed_248_token_clip_that_core_nodes_use(results):
    sd15 = result(results, "sd15")
    assert sd15["patcher"] == "ModelPatcher"
    assert sd15["shape"] == [1, 248, 768] and sd15["short_shape"] == [1, 248, 768]
    assert sd15["max_length"] == 248
    assert sd15["tokens_past_77_change"] > 1e-3  # the changed last word sits at token ~237
    assert sd15["tokens_before_change_equal"] == 0.0  # causal: earlier positions are untouched
    assert sd15["weighting_changes"] > 1e-3  # "(cat:1.5)" as in core
    assert sd15["clip_skip_changes"] > 1e-3  # CLIPSetLastLayer
    assert sd15["lora_changes"] > 1e-3  # lora_te_* keys map onto our encoder
    assert sd15["embedding_changes"] > 1e-3  # "embedding:name" syntax


def test_sdxl_node_gives_248_tokens_on_both_encoders_and_clip_g_pooled(results):
    sdxl = result(results, "sdxl")
    assert sdxl["base_shape"] == [1, 308, 2048]  # stock SDXL: 77-token windows
    assert sdxl["shape"] == [1, 248, 2048] and sdxl["pooled_shape"] == [1, 1280]
    assert sdxl["l_max_length"] == sdxl["g_max_length"] == 248
    assert sdxl["clip_l_past_77_change"] > 1e-3 and sdxl["clip_g_past_77_change"] > 1e-3
    assert sdxl["pooled_change"] > 1e-4  # pooled reads clip_g's end-of-text, after the changed word
    assert sdxl["g_table_vs_kps"] < 1e-3  # fp16 storage of the core's stretch_positions


def test_sdxl_node_windows_mode_lays_clip_g_windows_onto_248_positions(results):
    windows = result(results, "sdxl_windows")
    assert windows["shape"] == [1, 248, 2048] and windows["pooled_shape"] == [1, 1280]
    assert windows["g_positions"] == 77 and windows["g_max_length"] == 248
    assert 225 < windows["count"] <= 246  # four windows, the last one partly filled
    assert windows["clip_g_past_77_change"] > 1e-3  # the end of the prompt reaches clip_g (lost in core's trim)
    # fp32; the node encodes all windows as one batch, by hand one at a time (≈1e-6 from batched matmuls)
    assert windows["second_window_vs_by_hand"] < 1e-5
    assert windows["end_and_padding_vs_by_hand"] < 1e-5
    assert windows["pooled_vs_first_window"] < 1e-5
    assert windows["weighting_changes_clip_g"] > 1e-3
    assert windows["very_long_shape"] == [1, 496, 2048]
    assert windows["clip_l_vs_stretch_mode"] == 0.0


def test_stretch_node_applies_kps_to_every_encoder(results):
    stretch = result(results, "stretch")
    assert stretch["shape"] == [1, 248, 2048] and stretch["pooled_shape"] == [1, 1280]
    assert stretch["past_77_change"] > 1e-3
    assert stretch["g_table_vs_kps"] < 1e-3
    assert stretch["input_untouched_length"] == 77  # the input CLIP is not modified


def test_token_count_node(results):
    counted = result(results, "token_count")
    assert counted["tokens"] > 200 and counted["dropped"].endswith("the final object is red")
    assert counted["short_tokens"] == 5 and counted["short_dropped"] == ""


def test_loader_matches_the_reference_where_core_does_not(results):
    if not FIXTURE.is_file():
        pytest.skip(f"fixture {FIXTURE} missing (set LONGCLIP_FIXTURES)")
    fidelity = result(results, "fidelity")
    assert fidelity["rows"] == 11
    assert fidelity["ours_max_error"] < 1e-4
    assert fidelity["core_max_error"] > 1e-2  # core uses positional_embedding for rows ≥ 20 too
    assert fidelity["core_cliploader_error"] is not None  # core CLIPLoader cannot read a non-768 file at all


def test_saved_file_reloads_in_core_cliploader_with_identical_outputs(results):
    roundtrip = result(results, "roundtrip")
    assert roundtrip["shape"] == [1, 248, 768]
    assert roundtrip["reloaded_vs_ours"] == 0.0
    assert roundtrip["core_raw_vs_ours"] > 1e-2  # core CLIPLoader on the original file: the `_res` rows are lost
    assert roundtrip["saved_keys_sample"][0].startswith("text_model.")


def tiny_graph() -> dict:
    prompt = "a photo of " + " ".join(f"object{i} is round," for i in range(40)) + " and the last one is red"
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd15.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "LongCLIPLoader", "inputs": {"clip_name": "longclip-L-tiny.safetensors", "device": "default"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": prompt}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "seed": 1, "steps": 1, "cfg": 2.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "latents/longclip"}},
        "8": {"class_type": "LongCLIPPromptTokenCount", "inputs": {"text": prompt, "limit": 77}},
    }


def test_headless_server_runs_an_api_workflow(stand_in, tmp_path):
    base = tmp_path / "comfy-base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "longclip_diffusion_nodes").symlink_to(REPO / "comfyui_node", target_is_directory=True)
    files = run_worker(base, stand_in, "server_models")["server_models"]
    assert "error" not in files, files["error"]

    with ComfyServer(base, stand_in, tmp_path / "server.log") as server:
        info = server.get("/object_info")
        for node_id in ("LongCLIPLoader", "LongCLIPSDXL", "LongCLIPStretchKPS", "LongCLIPPromptTokenCount", "SaveLongCLIP"):
            assert node_id in info, f"{node_id} not registered; log:\n{server.log.read_text()[-3000:]}"
        assert "longclip-L-tiny.safetensors" in info["LongCLIPLoader"]["input"]["required"]["clip_name"][1]["options"] \
            or "longclip-L-tiny.safetensors" in info["LongCLIPLoader"]["input"]["required"]["clip_name"][0]
        for workflow in WORKFLOWS.glob("*_api.json"):  # shipped examples use only registered nodes and inputs
            for node in json.loads(workflow.read_text()).values():
                spec = info[node["class_type"]]["input"]
                known = {**spec.get("required", {}), **spec.get("optional", {})}
                assert set(node["inputs"]) <= set(known), (workflow.name, node["class_type"])

        entry = server.run_prompt(tiny_graph())
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert entry["outputs"]["7"]["latents"], entry["outputs"]
        assert "tokens" in entry["outputs"]["8"]["text"][0]
        assert list((base / "output" / "latents").glob("longclip*.latent"))
