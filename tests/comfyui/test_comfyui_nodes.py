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
    scenarios = ["nodes", "sd15", "sdxl", "sdxl_windows", "windows_vs_core", "sdxl_long_clip_g", "stretch", "token_count",
                 "fidelity", "flux", "flux_fp8_t5", "sd3", "bad_input"]
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
    nodes = result(results, "nodes")
    assert sorted(nodes["nodes"]) == nodes["repository_nodes"]  # repository cloned into custom_nodes/ (registry)
    assert set(nodes["nodes"]) == {
        "LongCLIPLoader", "LongCLIPSDXL", "LongCLIPFluxLoader", "LongCLIPSD3Loader", "LongCLIPStretchKPS",
        "LongCLIPPromptTokenCount", "SaveLongCLIP"}


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


@pytest.mark.parametrize("case", ["long", "long weighted", "short weighted", "empty"])
def test_windows_mode_equals_the_core_encode_windows(results, case):
    """One definition of clip_g windows and their weighting: the node (ComfyUI's encoder, tokenizer and weighting) and
    longclip_diffusion.prompts.encode_windows (the diffusers SDXL "windows" mode) agree on the same bigG weights."""
    found = result(results, "windows_vs_core")[case]
    assert found["shape"] == [1, 248, 2048]
    assert found["hidden"] < 1e-5 and found["pooled"] < 1e-5  # fp32; batched vs separate matmuls ≈ 1e-6


@pytest.mark.parametrize("case", ["long", "long blue", "long weighted", "short weighted", "empty"])
def test_sdxl_node_long_clip_g_equals_the_core_on_the_same_long_bigg(results, case):
    """long_clip_g (a long bigG written by our exporter, comfy_g) is clip_g at 248 positions ("supplied"): the
    conditioning's clip_g half and pooled vector equal the file read by the core (as the diffusers SDXL pipeline's
    bigg=<file> reads it) through prompts.encode_prompts, on the same prompt, weighted or not."""
    found = result(results, "sdxl_long_clip_g")["cases"][case]
    assert found["shape"] == [1, 248, 2048] and found["pooled_shape"] == [1, 1280]
    assert found["hidden"] < 1e-5 and found["pooled"] < 1e-5  # fp32 text encoders


def test_sdxl_node_long_clip_g_reads_past_77_tokens_with_the_files_positions(results):
    supplied = result(results, "sdxl_long_clip_g")
    assert supplied["hidden_act"] == "gelu"  # the exporter records bigG's activation; ComfyUI's clip_g is GELU too
    assert supplied["g_positions"] == supplied["g_max_length"] == supplied["l_max_length"] == 248
    assert supplied["g_table_vs_file"] == 0.0  # used as it is: not stretched, not windowed
    assert supplied["clip_g_past_77_change"] > 1e-3 and supplied["core_past_77_change"] > 1e-3
    assert supplied["clip_g_before_change_equal"] == 0.0  # causal: only positions from the changed word on move
    assert supplied["clip_l_vs_stretch_mode"] == 0.0  # long_clip_g changes clip_g only
    assert supplied["clip_g_vs_stretch_mode"] > 1e-2  # and replaces the checkpoint's clip_g
    assert supplied["input_clip_g_positions"] == 77  # the input CLIP is not modified


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


def test_flux_loader_equals_core_dualcliploader_fed_the_correct_table(results):
    """CLIPTextEncodeFlux and CLIPTextEncode on our Flux CLIP give exactly what core's DualCLIPLoader (type flux) gives
    for the same Long-CLIP-L with the reference position table built by hand, and so does the sampled latent; core
    on the raw file differs; the last word (past token 77) changes the pooled vector and the latent."""
    flux = result(results, "flux")
    assert flux["patcher"] == "ModelPatcher" and flux["l_max_length"] == 248
    assert flux["shape"] == [1, 256, 4096] and flux["pooled_shape"] == [1, 768] and flux["guidance"] == 3.5
    assert flux["cond_vs_core"] == flux["pooled_vs_core"] == 0.0  # fp32 text encoders
    assert flux["plain_vs_core"] == flux["plain_pooled_vs_core"] == 0.0
    assert flux["pooled_vs_core_raw_file"] > 1e-2  # core reading longclip-L itself drops positional_embedding_res
    assert flux["late_words_change_pooled"] > 1e-3  # the last word (token ~237) reaches Flux's pooled vector
    assert flux["lora_changes_pooled"] > 1e-3  # lora_te1_* keys map onto Long-CLIP-L
    # sampled by ComfyUI's Flux model (tiny, built in memory: see tiny_models.flux_model), T5 text held fixed
    assert flux["model_class"] == "Flux" and flux["image_finite"]
    assert flux["image_vs_core"] == 0.0 and flux["image_vs_core_raw_file"] > 1e-3
    assert flux["image_late_words_change"] > 1e-4  # only the pooled vector carries the changed last word here


@pytest.mark.parametrize("variant", ["fp8", "fp8_scaled"])
def test_flux_loader_reads_fp8_t5_files_as_core(results, variant):
    fp8 = result(results, "flux_fp8_t5")[variant]
    assert fp8["cond_vs_core"] == 0.0 and fp8["finite"]
    if variant == "fp8_scaled":  # kept in fp8 with ComfyUI's scaled-fp8 operations, as core does
        assert fp8["t5_weight_dtype"] == "torch.float8_e4m3fn"


def test_sd3_loader_equals_core_sd3_text_model_and_sampler(results):
    """CLIPTextEncodeSD3 on our SD3 CLIP equals core's SD3 text model fed Long-CLIP-L's reference table and a
    KPS-stretched bigG; a tiny MMDiT that ComfyUI detects as SD3 samples the same latent from both; late words
    change the CLIP part of the joint sequence, the pooled vector and the latent."""
    sd3 = result(results, "sd3")
    assert sd3["model_class"] == "SD3"
    assert sd3["shape"] == [1, 248 + 77, 4096] and sd3["pooled_shape"] == [1, 2048]
    assert sd3["l_max_length"] == sd3["g_max_length"] == 248
    assert sd3["cond_vs_core"] == sd3["pooled_vs_core"] == 0.0 and sd3["image_vs_core"] == 0.0
    assert sd3["plain_shape"][1] > 248 and sd3["plain_vs_core"] == 0.0  # CLIPTextEncode works on it too
    assert sd3["core_late_words_change"] > 1e-3  # the reference itself sees the changed word
    assert sd3["clip_l_late_words_change"] > 1e-3 and sd3["clip_g_late_words_change"] > 1e-3
    assert sd3["pooled_late_words_change"] > 1e-4
    assert sd3["image_late_words_change"] > 1e-4 and sd3["image_finite"]
    assert sd3["windows_shape"] == [1, 325, 4096] and sd3["windows_clip_l_vs_stretch"] == 0.0
    assert sd3["windows_clip_g_late_words_change"] > 1e-3
    assert sd3["lora_changes"] > 1e-3


# (case in the worker's scenario_bad_input, expected error type, phrase of the message)
BAD_INPUT = [
    ("stretch a Long-CLIP-L", "ValueError", "clip_l: The position table already has 248 positions"),
    ("stretch a long SDXL CLIP", "ValueError", "already long: use it as it is"),
    ("stretch keep too large", "ValueError", "`keep` must be between 0 and 75"),
    ("missing Long-CLIP file", "FileNotFoundError", "clip_name 'longclip-L.pt' is not in"),
    ("path outside the folder", "ValueError", "'../../etc/' is not a file name inside models/text_encoders"),
    ("Long-CLIP-B in the SDXL node", "ValueError", "'longclip-B-tiny.safetensors' is a 512-wide text encoder; SDXL's"),
    ("clip_g_mode typo", "ValueError", "clip_g_mode must be one of stretch, windows; got 'window'"),
    ("windows on a long clip_g", "ValueError", "clip_g already has 248 positions"),
    ("keep and ratio miss 248", "ValueError", "keep=10, ratio=4 give clip_g 278 positions"),
    ("SD 1.x CLIP in the SDXL node", "ValueError", "needs an SDXL CLIP"),
    ("missing long_clip_g", "FileNotFoundError", "long_clip_g 'longclip-g.safetensors' is not in"),
    ("77-position bigG as long_clip_g", "ValueError",
     "long_clip_g 'clip_g-tiny.safetensors' has 77 positions; it must have 248"),
    ("Long-CLIP-L as long_clip_g", "ValueError", "long_clip_g 'longclip-L-tiny.safetensors' is a 768-wide text encoder"),
    ("windows with long_clip_g", "ValueError", "clip_g_mode 'windows' reads the checkpoint's clip_g"),
    ("bigG as Flux clip_l", "ValueError", "1280-wide text encoder; Flux's clip_l is CLIP-L"),
    ("T5-XL in the Flux loader", "ValueError", "2048-wide text encoder; Flux's t5xxl is T5-XXL (4096 wide)"),
    ("CLIP as Flux t5xxl", "CheckpointError", "longclip-L-tiny.safetensors: not a T5 encoder"),
    ("device typo", "ValueError", "device must be one of default, cpu"),
    ("CLIP-L as SD3 clip_g", "ValueError", "768-wide text encoder; SD3's clip_g is CLIP-G/bigG (1280 wide)"),
    ("SD3 clip_g_mode typo", "ValueError", "got 'Windows'"),
    ("Long-CLIP-B in the SD 1.x loader", "warning", "longclip-B-tiny.safetensors is a 512-wide text encoder"),
]


@pytest.mark.parametrize("case, error, phrase", BAD_INPUT, ids=[case for case, _, _ in BAD_INPUT])
def test_bad_input_through_the_nodes_gives_one_clear_error(results, case, error, phrase):
    found_type, message = result(results, "bad_input")[case]
    assert found_type == error and phrase in message and "\n" not in message, (found_type, message)


def test_refused_calls_leave_the_input_clip_usable(results):
    assert result(results, "bad_input")["input CLIP still encodes"][0] == [1, 77, 2048]


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
        # SD3: a tiny MMDiT ComfyUI detects as SD3, our SD3 loader, core CLIPTextEncodeSD3
        "9": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd3.safetensors", "weight_dtype": "default"}},
        "10": {"class_type": "LongCLIPSD3Loader", "inputs": {
            "clip_l_name": "longclip-L-tiny.safetensors", "clip_g_name": "clip_g-tiny.safetensors",
            "t5xxl_name": "t5xxl-tiny.safetensors", "clip_g_mode": "stretch", "device": "default"}},
        "11": {"class_type": "CLIPTextEncodeSD3", "inputs": {"clip": ["10", 0], "clip_l": prompt, "clip_g": prompt,
                                                            "t5xxl": prompt, "empty_padding": "none"}},
        "12": {"class_type": "CLIPTextEncodeSD3", "inputs": {"clip": ["10", 0], "clip_l": "", "clip_g": "", "t5xxl": "",
                                                            "empty_padding": "empty_prompt"}},
        "13": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "14": {"class_type": "KSampler", "inputs": {"model": ["9", 0], "positive": ["11", 0], "negative": ["12", 0],
                                                    "latent_image": ["13", 0], "seed": 1, "steps": 1, "cfg": 2.0,
                                                    "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "15": {"class_type": "SaveLatent", "inputs": {"samples": ["14", 0], "filename_prefix": "latents/longclip-sd3"}},
        # Flux: our Flux loader and core CLIPTextEncodeFlux (a Flux diffusion model is 3072 wide at least: not run)
        "16": {"class_type": "LongCLIPFluxLoader", "inputs": {"clip_l_name": "longclip-L-tiny.safetensors",
                                                             "t5xxl_name": "t5xxl-tiny.safetensors"}},
        "17": {"class_type": "CLIPTextEncodeFlux", "inputs": {"clip": ["16", 0], "clip_l": prompt, "t5xxl": prompt,
                                                             "guidance": 3.5}},
        "18": {"class_type": "PreviewAny", "inputs": {"source": ["17", 0]}},
    }


def test_headless_server_runs_an_api_workflow(stand_in, tmp_path):
    base = tmp_path / "comfy-base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "longclip_diffusion_nodes").symlink_to(REPO / "comfyui_node", target_is_directory=True)
    files = run_worker(base, stand_in, "server_models")["server_models"]
    assert "error" not in files, files["error"]

    with ComfyServer(base, stand_in, tmp_path / "server.log") as server:
        info = server.get("/object_info")
        for node_id in ("LongCLIPLoader", "LongCLIPSDXL", "LongCLIPFluxLoader", "LongCLIPSD3Loader", "LongCLIPStretchKPS",
                        "LongCLIPPromptTokenCount", "SaveLongCLIP"):
            assert node_id in info, f"{node_id} not registered; log:\n{server.log.read_text()[-3000:]}"
        assert "longclip-L-tiny.safetensors" in info["LongCLIPLoader"]["input"]["required"]["clip_name"][1]["options"] \
            or "longclip-L-tiny.safetensors" in info["LongCLIPLoader"]["input"]["required"]["clip_name"][0]
        long_clip_g = info["LongCLIPSDXL"]["input"]["optional"]["long_clip_g"]  # optional: older graphs still load
        assert long_clip_g[-1]["default"] == "none"
        assert "longclip-L-tiny.safetensors" in (long_clip_g[1].get("options") or long_clip_g[0])
        for workflow in WORKFLOWS.glob("*_api.json"):  # shipped examples use only registered nodes and inputs
            for node in json.loads(workflow.read_text()).values():
                spec = info[node["class_type"]]["input"]
                known = {**spec.get("required", {}), **spec.get("optional", {})}
                assert set(node["inputs"]) <= set(known), (workflow.name, node["class_type"])

        entry = server.run_prompt(tiny_graph())
        assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
        assert entry["outputs"]["7"]["latents"], entry["outputs"]
        assert "tokens" in entry["outputs"]["8"]["text"][0]
        assert entry["outputs"]["15"]["latents"], entry["outputs"]
        assert "pooled_output" in entry["outputs"]["18"]["text"][0]
        assert len(list((base / "output" / "latents").glob("longclip*.latent"))) == 2
