"""Runs inside ComfyUI's venv (see test_comfyui_nodes.py): imports ComfyUI and our nodes in-process, runs scenarios,
prints one ``RESULT <json>`` line. Usage: python comfy_worker.py WORKDIR SCENARIO [SCENARIO …]"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FIXTURES = Path(os.environ.get("LONGCLIP_FIXTURES", HERE.parents[2] / "shared" / "fixtures"))
sys.path.insert(0, os.environ["LONGCLIP_COMFYUI_PATH"])
sys.path.insert(0, str(HERE))

from comfy.cli_args import args  # noqa: E402

args.cpu = True
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import comfy.model_management  # noqa: E402,F401
import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
import nodes as core_nodes  # noqa: E402
import tiny_models  # noqa: E402
from longclip_diffusion import prompts  # noqa: E402

WORK = Path(sys.argv[1])
TEXT_ENCODERS = WORK / "models" / "text_encoders"
EMBEDDINGS = WORK / "models" / "embeddings"
for folder in (TEXT_ENCODERS, EMBEDDINGS, WORK / "output"):
    folder.mkdir(parents=True, exist_ok=True)
folder_paths.add_model_folder_path("text_encoders", str(TEXT_ENCODERS), is_default=True)
folder_paths.add_model_folder_path("embeddings", str(EMBEDDINGS), is_default=True)
folder_paths.set_output_directory(str(WORK / "output"))


def import_node_package(folder=REPO / "comfyui_node", name="longclip_comfyui_node"):
    """Import a custom-node folder the way ComfyUI does, and list its nodes via comfy_entrypoint."""
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    extension = asyncio.run(module.comfy_entrypoint())
    node_list = asyncio.run(extension.get_node_list())
    return {cls.GET_SCHEMA().node_id: cls for cls in node_list}


NODES = import_node_package()


def run_node(node_id, **inputs):
    return NODES[node_id].execute(**inputs).args


def encode(clip, text):
    ((cond, extra),) = core_nodes.CLIPTextEncode().encode(clip, text)[0]
    return cond.float(), extra.get("pooled_output")


def long_prompt(last_word="red"):
    words = " ".join(f"object{i} is round," for i in range(40))  # ≈ 160 tokens
    return f"a photo of {words} and the final object is {last_word}"


def write_long_clip_l(name="longclip-L-tiny.safetensors", **kwargs):
    path = TEXT_ENCODERS / name
    if not path.exists():
        save_file(tiny_models.openai_text_state_dict(**kwargs), str(path))
    return name


def diff(a, b):
    return float((a.float() - b.float()).abs().max())


# ---------------------------------------------------------------------------------------------------------------
# Scenarios


def scenario_nodes():
    info = {node_id: cls.GET_SCHEMA().display_name for node_id, cls in NODES.items()}
    # the Comfy registry / ComfyUI-Manager layout: the whole repository cloned into custom_nodes/
    repository = import_node_package(REPO, "longclip_diffusion_repository")
    return {"nodes": info, "repository_nodes": sorted(repository)}


def scenario_sd15():
    name = write_long_clip_l()
    (clip,) = run_node("LongCLIPLoader", clip_name=name)
    cond, pooled = encode(clip, long_prompt("red"))
    cond_blue, _ = encode(clip, long_prompt("blue"))
    short, _ = encode(clip, "a photo of a cat")
    weighted, _ = encode(clip, "a photo of a (cat:1.5)")
    (skip,) = core_nodes.CLIPSetLastLayer().set_last_layer(clip, -2)
    skipped, _ = encode(skip, "a photo of a cat")

    lora = {}
    for layer in range(2):
        key = f"lora_te_text_model_encoder_layers_{layer}_mlp_fc1"
        lora[key + ".lora_up.weight"] = torch.randn(256, 4) * 0.5
        lora[key + ".lora_down.weight"] = torch.randn(4, 768) * 0.5
        lora[key + ".alpha"] = torch.tensor(4.0)
    _, lora_clip = comfy.sd.load_lora_for_models(None, clip, lora, 0.0, 1.0)
    with_lora, _ = encode(lora_clip, "a photo of a cat")

    torch.manual_seed(0)
    save_file({"emb_params": torch.randn(2, 768) * 0.5}, str(EMBEDDINGS / "tinyemb.safetensors"))
    with_embedding, _ = encode(clip, "a photo of a cat embedding:tinyemb")
    without_embedding, _ = encode(clip, "a photo of a cat")

    return {
        "patcher": type(clip.patcher).__name__,
        "shape": list(cond.shape),
        "tokens_past_77_change": diff(cond[:, 150:], cond_blue[:, 150:]),
        "tokens_before_change_equal": diff(cond[:, :140], cond_blue[:, :140]),
        "short_shape": list(short.shape),
        "weighting_changes": diff(short, weighted),
        "clip_skip_changes": diff(short, skipped),
        "lora_changes": diff(short, with_lora),
        "embedding_changes": diff(with_embedding, without_embedding),
        "max_length": clip.tokenizer.clip_l.max_length,
    }


def sdxl_clip(l_positions=77, g_positions=77):
    """An SDXL CLIP built the way a checkpoint loader builds it (SDXLClipModel + SDXLTokenizer), tiny depth."""
    import types

    import comfy.sdxl_clip

    l_sd = tiny_models.comfy_text_state_dict(width=768, layers=3, positions=l_positions, seed=3)
    g_sd = tiny_models.comfy_text_state_dict(width=1280, layers=3, positions=g_positions, seed=4)
    state_dict = {"clip_l.transformer." + k: v for k, v in l_sd.items()}
    state_dict.update({"clip_g.transformer." + k: v for k, v in g_sd.items()})
    config = {"num_hidden_layers": 3, "intermediate_size": 256}
    target = types.SimpleNamespace(clip=comfy.sdxl_clip.SDXLClipModel, tokenizer=comfy.sdxl_clip.SDXLTokenizer, params={})
    clip = comfy.sd.CLIP(
        target,
        model_options={
            "clip_l_model_config": {**config, "max_position_embeddings": l_positions},
            "clip_g_model_config": {**config, "max_position_embeddings": g_positions},
        },
    )
    clip.load_sd(state_dict, full_model=True)
    return clip, g_sd


def scenario_sdxl():
    from longclip_diffusion import positions

    name = write_long_clip_l()
    base, g_sd = sdxl_clip()
    base_cond, _ = encode(base, long_prompt("red"))
    (clip,) = run_node("LongCLIPSDXL", clip=base, long_clip_l=name, keep=20, ratio=4)
    cond, pooled = encode(clip, long_prompt("red"))
    cond_blue, pooled_blue = encode(clip, long_prompt("blue"))
    g_table = clip.cond_stage_model.clip_g.transformer.text_model.embeddings.position_embedding.weight
    expected = positions.stretch_positions(g_sd["text_model.embeddings.position_embedding.weight"].float())
    return {
        "base_shape": list(base_cond.shape),
        "shape": list(cond.shape),
        "pooled_shape": list(pooled.shape),
        "clip_l_past_77_change": diff(cond[:, 150:, :768], cond_blue[:, 150:, :768]),
        "clip_g_past_77_change": diff(cond[:, 150:, 768:], cond_blue[:, 150:, 768:]),
        "pooled_change": diff(pooled, pooled_blue),
        "g_table_vs_kps": diff(g_table, expected),
        "g_max_length": clip.tokenizer.clip_g.max_length,
        "l_max_length": clip.tokenizer.clip_l.max_length,
    }


def scenario_sdxl_windows():
    """clip_g in 75-token windows: checked against windows built by hand and encoded by the untouched clip_g."""
    name = write_long_clip_l()
    base, _ = sdxl_clip()
    (clip,) = run_node("LongCLIPSDXL", clip=base, long_clip_l=name, keep=20, ratio=4, clip_g_mode="windows")
    (stretched,) = run_node("LongCLIPSDXL", clip=base, long_clip_l=name, keep=20, ratio=4)
    prompt = long_prompt("red")
    cond, pooled = encode(clip, prompt)
    cond_blue, _ = encode(clip, long_prompt("blue"))
    stretched_cond, _ = encode(stretched, prompt)
    plain, _ = encode(clip, "a photo of a cat")
    weighted, _ = encode(clip, "a photo of a (cat:1.5)")
    very_long, _ = encode(clip, prompt + ", " + prompt)  # over 246 tokens: core tokenizes a second 248 batch

    ids = [token for token, _ in clip.tokenize(prompt)["g"][0]]
    count = ids.index(49407) - 1
    tokens = ids[1 : 1 + count]
    clip_g = base.cond_stage_model.clip_g
    base.load_model()

    def by_hand(chunk):
        window = [49406, *chunk, 49407] + [0] * (75 - len(chunk))
        return clip_g.encode_token_weights([[(token, 1.0) for token in window]])

    second, _ = by_hand(tokens[75:150])
    last_chunk = tokens[225:]
    last, _ = by_hand(last_chunk)
    _, first_pooled = by_hand(tokens[:75])
    end = 1 + count
    return {
        "shape": list(cond.shape),
        "pooled_shape": list(pooled.shape),
        "count": count,
        "g_max_length": clip.tokenizer.clip_g.max_length,
        "g_positions": clip.cond_stage_model.clip_g.transformer.text_model.embeddings.position_embedding.num_embeddings,
        "clip_g_past_77_change": diff(cond[:, 150:, 768:], cond_blue[:, 150:, 768:]),
        "second_window_vs_by_hand": diff(cond[0, 76:151, 768:], second[0, 1:76]),
        "end_and_padding_vs_by_hand": diff(cond[0, end:, 768:], last[0, len(last_chunk) + 1 : len(last_chunk) + 249 - end]),
        "pooled_vs_first_window": diff(pooled, first_pooled),
        "weighting_changes_clip_g": diff(plain[..., 768:], weighted[..., 768:]),
        "very_long_shape": list(very_long.shape),
        "clip_l_vs_stretch_mode": diff(cond[..., :768], stretched_cond[..., :768]),
    }


def scenario_windows_vs_core():
    """The node's clip_g windows (ComfyUI's encoder and weighting) against the core's prompts.encode_windows (what the
    diffusers SDXL pipeline's "windows" mode runs) on the same bigG weights: one definition of windowed weighting."""
    from transformers import CLIPTextModelWithProjection

    from longclip_diffusion import checkpoints, tokenizer

    args.fp32_text_enc = True
    name = write_long_clip_l()
    base, g_sd = sdxl_clip()
    (clip,) = run_node("LongCLIPSDXL", clip=base, long_clip_l=name, keep=20, ratio=4, clip_g_mode="windows")
    config = checkpoints.clip_text_config(hidden_size=1280, intermediate_size=256, num_hidden_layers=3,
                                          max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
    clip_g = CLIPTextModelWithProjection(config).eval()  # bigG's config (gelu), the tiny shapes of sdxl_clip()
    clip_g.load_state_dict({key: value.float() for key, value in g_sd.items()})
    texts = {
        "long": long_prompt("red"),
        "long weighted": long_prompt("(red:1.4)").replace("object3 is round", "(object3 is round:0.6)"),
        "short weighted": "a photo of a (cat:1.5) on a ((mat))",
        "empty": "",
    }
    found = {}
    for case, text in texts.items():
        cond, pooled = encode(clip, text)
        with torch.no_grad():
            core = prompts.encode_windows(clip_g, tokenizer.default_tokenizer(), [text], length=248, pad_token_id=0,
                                          hidden_state="penultimate")
        found[case] = {"hidden": diff(cond[..., 768:], core.hidden_states), "pooled": diff(pooled, core.pooled),
                       "shape": list(cond.shape)}
    args.fp32_text_enc = False
    return found


def write_long_clip_g(name="longclip-g-tiny.safetensors"):
    """A long bigG written by our exporter (``export_model(..., ["comfy_g"])``, as ``longclip train --export comfy_g``):
    bigG's width (1280), GELU, heads width / 64, its projection; 3 layers; KPS to 248 positions as training starts,
    then every row past 20 moved as training would (so the file's table is neither KPS nor the checkpoint's)."""
    path = TEXT_ENCODERS / name
    if not path.exists():
        from transformers import CLIPConfig, CLIPModel

        from longclip_diffusion.training.export import EXPORT_PATHS, export_model
        from longclip_diffusion.training.model import prepare_for_training

        torch.manual_seed(9)
        text = dict(vocab_size=49408, hidden_size=1280, intermediate_size=256, num_hidden_layers=3,
                    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", bos_token_id=49406,
                    eos_token_id=49407, pad_token_id=0)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1, image_size=32,
                      patch_size=8, hidden_act="gelu")
        model = prepare_for_training(CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=1280)))
        with torch.no_grad():
            model.text_model.embeddings.position_embedding.trainable.add_(torch.randn(228, 1280) * 0.01)
        export = export_model(model, WORK / "long-bigg-export", ["comfy_g"])["comfy_g"]
        assert export.name == EXPORT_PATHS["comfy_g"]
        shutil.move(str(export), path)
    return name


def scenario_sdxl_long_clip_g():
    """Long-CLIP SDXL with long_clip_g (mode "supplied"): clip_g is the long bigG file at its 248 positions, and the
    conditioning's clip_g half and pooled vector equal the same file read by the core (checkpoints.load_text_encoder,
    as the diffusers SDXL pipeline's bigg=<file>) through prompts.encode_prompts, SDXL's penultimate hidden states."""
    from longclip_diffusion import checkpoints, comfy_format, tokenizer

    args.fp32_text_enc = True
    name, long_g = write_long_clip_l(), write_long_clip_g()
    base, _ = sdxl_clip()
    (clip,) = run_node("LongCLIPSDXL", clip=base, long_clip_l=name, keep=20, ratio=4, long_clip_g=long_g)
    (stretched,) = run_node("LongCLIPSDXL", clip=base, long_clip_l=name, keep=20, ratio=4, long_clip_g="none")
    clip_g = checkpoints.load_text_encoder(TEXT_ENCODERS / long_g, with_projection=True)
    texts = {
        "long": long_prompt("red"),
        "long blue": long_prompt("blue"),
        "long weighted": long_prompt("(red:1.4)").replace("object3 is round", "(object3 is round:0.6)"),
        "short weighted": "a photo of a (cat:1.5) on a ((mat))",
        "empty": "",
    }
    found, conds = {}, {}
    for case, text in texts.items():
        cond, pooled = encode(clip, text)
        with torch.no_grad():
            core = prompts.encode_prompts(clip_g, tokenizer.default_tokenizer(), [text], pad_token_id=0,
                                          hidden_state="penultimate")
        conds[case] = cond, core.hidden_states
        found[case] = {"hidden": diff(cond[..., 768:], core.hidden_states), "pooled": diff(pooled, core.pooled),
                       "shape": list(cond.shape), "pooled_shape": list(pooled.shape)}
    stretched_cond, _ = encode(stretched, texts["long"])
    (red, core_red), (blue, core_blue) = conds["long"], conds["long blue"]
    g_table = clip.cond_stage_model.clip_g.transformer.text_model.embeddings.position_embedding.weight
    args.fp32_text_enc = False
    return {
        "cases": found,
        "hidden_act": clip_g.config.hidden_act,
        "g_positions": g_table.shape[0],
        "g_max_length": clip.tokenizer.clip_g.max_length,
        "l_max_length": clip.tokenizer.clip_l.max_length,
        "g_table_vs_file": diff(g_table, load_file(str(TEXT_ENCODERS / long_g))[comfy_format.TABLE]),
        "clip_g_past_77_change": diff(red[:, 150:, 768:], blue[:, 150:, 768:]),
        "core_past_77_change": diff(core_red[:, 150:], core_blue[:, 150:]),
        "clip_g_before_change_equal": diff(red[:, :140, 768:], blue[:, :140, 768:]),
        "clip_l_vs_stretch_mode": diff(red[..., :768], stretched_cond[..., :768]),
        "clip_g_vs_stretch_mode": diff(red[..., 768:], stretched_cond[..., 768:]),
        "input_clip_g_positions": base.cond_stage_model.clip_g.transformer.text_model.embeddings.position_embedding
        .weight.shape[0],
    }


def scenario_stretch():
    from longclip_diffusion import positions

    base, g_sd = sdxl_clip()
    (clip,) = run_node("LongCLIPStretchKPS", clip=base, keep=20, ratio=4)
    cond, pooled = encode(clip, long_prompt("red"))
    cond_blue, _ = encode(clip, long_prompt("blue"))
    g_table = clip.cond_stage_model.clip_g.transformer.text_model.embeddings.position_embedding.weight
    expected = positions.stretch_positions(g_sd["text_model.embeddings.position_embedding.weight"].float())
    return {
        "shape": list(cond.shape),
        "pooled_shape": list(pooled.shape),
        "past_77_change": diff(cond[:, 150:], cond_blue[:, 150:]),
        "g_table_vs_kps": diff(g_table, expected),
        "input_untouched_length": base.tokenizer.clip_l.max_length,
    }


def scenario_token_count():
    (tokens, dropped) = run_node("LongCLIPPromptTokenCount", text=long_prompt("red"), limit=77)
    (short_tokens, short_dropped) = run_node("LongCLIPPromptTokenCount", text="a photo of a cat", limit=77)
    return {"tokens": tokens, "dropped": dropped, "short_tokens": short_tokens, "short_dropped": short_dropped}


def scenario_fidelity():
    """Our loader reproduces the official outputs on a file whose two tables differ; core's conversion does not."""
    import comfy.utils

    args.fp32_text_enc = True
    shutil.copy(FIXTURES / "longclip-reference-tiny.safetensors", TEXT_ENCODERS / "reference-tiny.safetensors")
    reference = load_file(str(FIXTURES / "longclip-reference-tiny-outputs.safetensors"))
    ids, hidden = reference["input_ids"], reference["last_hidden_state"]

    (ours,) = run_node("LongCLIPLoader", clip_name="reference-tiny.safetensors")
    # Core's own path for an OpenAI-layout file (what CLIPLoader does), given the tiny shapes it cannot infer itself.
    raw = comfy.utils.load_torch_file(str(TEXT_ENCODERS / "reference-tiny.safetensors"), safe_load=True)
    raw = {k: v for k, v in raw.items() if not k.startswith("visual.") and k != "text_projection"}
    config = {"hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512, "num_hidden_layers": 3}
    core = comfy.sd.load_text_encoder_state_dicts([raw], model_options={"model_config": config})
    try:
        core_nodes.CLIPLoader().load_clip("reference-tiny.safetensors")
        core_loader_error = None
    except Exception as error:  # core CLIPLoader assumes CLIP-L's 768 width
        core_loader_error = type(error).__name__

    ours_err, core_err = 0.0, 0.0
    for row in range(ids.shape[0]):
        tokens = {"l": [[(int(t), 1.0) for t in ids[row]]]}
        end = int((ids[row] == 49407).nonzero()[0]) + 1
        ours_out = ours.encode_from_tokens(tokens)[0, :end].float()
        core_out = core.encode_from_tokens(tokens)[0, :end].float()
        ours_err = max(ours_err, diff(ours_out, hidden[row, :end]))
        core_err = max(core_err, diff(core_out, hidden[row, :end]))
    args.fp32_text_enc = False
    return {"ours_max_error": ours_err, "core_max_error": core_err, "core_cliploader_error": core_loader_error,
            "rows": int(ids.shape[0])}


def scenario_roundtrip():
    """Full CLIP-L shape: Save Long-CLIP → core CLIPLoader gives our loader's outputs; core on the raw file differs."""
    args.fp32_text_enc = True
    name = write_long_clip_l("longclip-L-full.safetensors", layers=12, intermediate=3072, seed=5)
    (ours,) = run_node("LongCLIPLoader", clip_name=name)
    run_node("SaveLongCLIP", clip=ours, filename_prefix="text_encoders/roundtrip", encoder="clip_l")
    (saved,) = list((WORK / "output" / "text_encoders").glob("roundtrip*.safetensors"))
    shutil.move(str(saved), TEXT_ENCODERS / "roundtrip.safetensors")
    (reloaded,) = core_nodes.CLIPLoader().load_clip("roundtrip.safetensors")
    (core_raw,) = core_nodes.CLIPLoader().load_clip(name)
    prompt = long_prompt("red")
    ours_cond, _ = encode(ours, prompt)
    reloaded_cond, _ = encode(reloaded, prompt)
    core_cond, _ = encode(core_raw, prompt)
    args.fp32_text_enc = False
    return {
        "shape": list(reloaded_cond.shape),
        "reloaded_vs_ours": diff(reloaded_cond, ours_cond),
        "core_raw_vs_ours": diff(core_cond, ours_cond),
        "core_raw_first_20_vs_ours": diff(core_cond[:, :20], ours_cond[:, :20]),
        "saved_keys_sample": sorted(load_file(str(TEXT_ENCODERS / "roundtrip.safetensors")))[:3],
    }


# ---------------------------------------------------------------------------------------------------------------
# Flux and SD3: our loaders vs core's (comfy.sd.load_clip / core's SD3 text model) fed the correct position table


TINY_L = {"num_hidden_layers": 3, "intermediate_size": 256}  # tiny_models.openai_text_state_dict defaults, 768 wide
TINY_T5 = {"num_layers": 1, "num_heads": 2, "d_kv": 16, "d_ff": 64}  # tiny_models.t5_state_dict defaults


def write_file(name, make):
    path = TEXT_ENCODERS / name
    if not path.exists():
        save_file(make(), str(path))
    return name


def write_t5():
    return write_file("t5xxl-tiny.safetensors", tiny_models.t5_state_dict)


def write_clip_g():
    return write_file("clip_g-tiny.safetensors", lambda: tiny_models.comfy_text_state_dict(width=1280, positions=77, seed=4))


def write_correct_table_l():
    """The Long-CLIP-L file with the reference position table made by hand (rows < 20 from positional_embedding,
    the rest from positional_embedding_res) and no `_res`: what core loaders read correctly (they convert the
    OpenAI layout themselves)."""

    def make():
        state_dict = tiny_models.openai_text_state_dict()
        res = state_dict.pop("positional_embedding_res")
        state_dict["positional_embedding"] = torch.cat([state_dict["positional_embedding"][:20], res[20:]])
        return state_dict

    return write_file("longclip-L-correct-table.safetensors", make)


def core_flux_clip(clip_l_name, t5_name, **t5_detected):
    """What core DualCLIPLoader (type flux) builds, given the tiny shapes its fixed configs cannot infer (and what
    core detects from T5's 24th block, which a tiny T5 lacks: ``t5xxl_scaled_fp8``)."""
    return comfy.sd.load_clip(
        [str(TEXT_ENCODERS / clip_l_name), str(TEXT_ENCODERS / t5_name)],
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        clip_type=comfy.sd.CLIPType.FLUX,
        model_options={"model_config": dict(TINY_L), "t5xxl_model_config": TINY_T5, **t5_detected},
    )


def core_sd3_clip(clip_l_name, clip_g_state_dict, t5_name):
    """Core's SD3 text model and tokenizer (what TripleCLIPLoader builds) with each file loaded into its slot by
    core's own code. TripleCLIPLoader itself routes clip_g by its 32 layers (a tiny one would land in clip_l)."""
    import types

    import comfy.text_encoders.sd3_clip as sd3
    import comfy.utils

    l_sd = comfy.utils.clip_text_transformers_convert(load_file(str(TEXT_ENCODERS / clip_l_name)), "", "")
    t5_sd = load_file(str(TEXT_ENCODERS / t5_name))
    target = types.SimpleNamespace(clip=sd3.sd3_clip(**sd3.t5_xxl_detect(t5_sd)), tokenizer=sd3.SD3Tokenizer, params={})
    clip = comfy.sd.CLIP(
        target,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        tokenizer_data={"clip_l_max_length": 248, "clip_g_max_length": 248},
        model_options={"clip_l_model_config": {**TINY_L, "max_position_embeddings": 248},
                       "clip_g_model_config": {**TINY_L, "max_position_embeddings": 248},
                       "t5xxl_model_config": TINY_T5},
    )
    clip.cond_stage_model.clip_l.load_sd(l_sd)
    clip.cond_stage_model.clip_g.load_sd(clip_g_state_dict)
    clip.cond_stage_model.t5xxl.load_sd(t5_sd)
    return clip


def tiny_lora(prefix):
    lora = {}
    for layer in range(2):
        key = f"{prefix}_text_model_encoder_layers_{layer}_mlp_fc1"
        lora[key + ".lora_up.weight"] = torch.randn(256, 4) * 0.5
        lora[key + ".lora_down.weight"] = torch.randn(4, 768) * 0.5
        lora[key + ".alpha"] = torch.tensor(4.0)
    return lora


def conditioning(output):
    ((cond, extra),) = output.args[0]
    return cond.float(), extra


def scenario_flux():
    from comfy_extras.nodes_flux import CLIPTextEncodeFlux

    args.fp32_text_enc = True
    name, t5, correct = write_long_clip_l(), write_t5(), write_correct_table_l()
    (ours,) = run_node("LongCLIPFluxLoader", clip_l_name=name, t5xxl_name=t5)
    core = core_flux_clip(correct, t5)
    core_raw = core_flux_clip(name, t5)  # the OpenAI-layout Long-CLIP file as core reads it (`_res` dropped)

    def flux(clip, clip_l_text, t5_text="a photo of a cat"):
        return conditioning(CLIPTextEncodeFlux.execute(clip, clip_l_text, t5_text, 3.5))

    red, red_extra = flux(ours, long_prompt("red"))
    core_red, core_red_extra = flux(core, long_prompt("red"))
    raw_red, raw_red_extra = flux(core_raw, long_prompt("red"))
    blue, blue_extra = flux(ours, long_prompt("blue"))
    plain, plain_pooled = encode(ours, long_prompt("red"))  # core CLIPTextEncode: both encoders read the text
    core_plain, core_plain_pooled = encode(core, long_prompt("red"))
    torch.manual_seed(0)
    _, lora_clip = comfy.sd.load_lora_for_models(None, ours, tiny_lora("lora_te1"), 0.0, 1.0)
    _, lora_extra = flux(lora_clip, long_prompt("red"))
    args.fp32_text_enc = False

    model = tiny_models.flux_model()
    latent = {"samples": torch.zeros(1, 16, 8, 8)}

    def sample(cond, extra):  # as the Flux workflows: cfg 1, negative zeroed out (ConditioningZeroOut)
        positive = [[cond, {"pooled_output": extra["pooled_output"], "guidance": 3.5}]]
        negative = [[torch.zeros_like(cond), {"pooled_output": torch.zeros_like(extra["pooled_output"])}]]
        (out,) = core_nodes.common_ksampler(model, 1, 2, 1.0, "euler", "simple", positive, negative, latent)
        return out["samples"].float()

    image, core_image, blue_image = sample(red, red_extra), sample(core_red, core_red_extra), sample(blue, blue_extra)
    return {
        "model_class": type(model.model).__name__,
        "image_vs_core": diff(image, core_image),
        "image_vs_core_raw_file": diff(image, sample(raw_red, raw_red_extra)),
        "image_late_words_change": diff(image, blue_image),
        "image_finite": bool(torch.isfinite(image).all()),
        "patcher": type(ours.patcher).__name__,
        "shape": list(red.shape),
        "pooled_shape": list(red_extra["pooled_output"].shape),
        "guidance": red_extra.get("guidance"),
        "l_max_length": ours.tokenizer.clip_l.max_length,
        "cond_vs_core": diff(red, core_red),
        "pooled_vs_core": diff(red_extra["pooled_output"], core_red_extra["pooled_output"]),
        "plain_vs_core": diff(plain, core_plain),
        "plain_pooled_vs_core": diff(plain_pooled, core_plain_pooled),
        "pooled_vs_core_raw_file": diff(red_extra["pooled_output"], raw_red_extra["pooled_output"]),
        "late_words_change_pooled": diff(red_extra["pooled_output"], blue_extra["pooled_output"]),
        "lora_changes_pooled": diff(red_extra["pooled_output"], lora_extra["pooled_output"]),
    }


def scenario_flux_fp8_t5():
    """The fp8 T5 files users run (t5xxl_fp8_e4m3fn, and the scaled variant with per-weight scales) read as core
    DualCLIPLoader reads them."""
    from comfy_extras.nodes_flux import CLIPTextEncodeFlux

    def fp8(scaled):
        state_dict = {}
        for key, value in tiny_models.t5_state_dict().items():
            if key.endswith(".weight") and value.ndim == 2 and key != "shared.weight":
                state_dict[key] = (value.float() * 2).to(torch.float8_e4m3fn) if scaled else value.to(torch.float8_e4m3fn)
                if scaled:
                    state_dict[key[: -len("weight")] + "scale_weight"] = torch.tensor(0.5)
            else:
                state_dict[key] = value
        if scaled:
            state_dict["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
        return state_dict

    name, correct = write_long_clip_l(), write_correct_table_l()
    found = {}
    for variant, scaled in (("fp8", False), ("fp8_scaled", True)):
        t5 = write_file(f"t5xxl-tiny-{variant}.safetensors", lambda: fp8(scaled))
        (ours,) = run_node("LongCLIPFluxLoader", clip_l_name=name, t5xxl_name=t5)
        core = core_flux_clip(correct, t5, **({"t5xxl_scaled_fp8": torch.float8_e4m3fn} if scaled else {}))
        text = long_prompt("red")
        cond, extra = conditioning(CLIPTextEncodeFlux.execute(ours, text, text, 3.5))
        core_cond, core_extra = conditioning(CLIPTextEncodeFlux.execute(core, text, text, 3.5))
        found[variant] = {"cond_vs_core": diff(cond, core_cond), "finite": bool(torch.isfinite(cond).all()),
                          "t5_weight_dtype": str(ours.cond_stage_model.t5xxl.transformer.encoder.block[0].layer[0]
                                                 .SelfAttention.q.weight.dtype)}
    return found


def scenario_sd3():
    import comfy.sample
    import comfy.utils
    from comfy_extras.nodes_sd3 import CLIPTextEncodeSD3

    from longclip_diffusion import positions

    args.fp32_text_enc = True
    name, clip_g, t5, correct = write_long_clip_l(), write_clip_g(), write_t5(), write_correct_table_l()
    (ours,) = run_node("LongCLIPSD3Loader", clip_l_name=name, clip_g_name=clip_g, t5xxl_name=t5)
    (windows,) = run_node("LongCLIPSD3Loader", clip_l_name=name, clip_g_name=clip_g, t5xxl_name=t5,
                          clip_g_mode="windows")
    g_sd = load_file(str(TEXT_ENCODERS / clip_g))
    table = "text_model.embeddings.position_embedding.weight"
    g_sd[table] = positions.stretch_positions(g_sd[table])  # the reference recipe (KPS, keep 20, ratio 4), fp16 file
    core = core_sd3_clip(correct, g_sd, t5)

    def sd3(clip, text):
        return conditioning(CLIPTextEncodeSD3.execute(clip, text, text, "a photo of a cat", "none"))

    red, red_extra = sd3(ours, long_prompt("red"))
    blue, blue_extra = sd3(ours, long_prompt("blue"))
    core_red, core_red_extra = sd3(core, long_prompt("red"))
    core_blue, core_blue_extra = sd3(core, long_prompt("blue"))
    negative, negative_extra = sd3(ours, "")
    plain, plain_pooled = encode(ours, long_prompt("red"))  # core CLIPTextEncode: all three encoders read the text
    core_plain, core_plain_pooled = encode(core, long_prompt("red"))
    windows_red, _ = sd3(windows, long_prompt("red"))
    windows_blue, _ = sd3(windows, long_prompt("blue"))
    torch.manual_seed(0)
    _, lora_clip = comfy.sd.load_lora_for_models(None, ours, tiny_lora("lora_te1"), 0.0, 1.0)
    lora_red, _ = sd3(lora_clip, long_prompt("red"))
    args.fp32_text_enc = False

    model = comfy.sd.load_diffusion_model_state_dict(tiny_models.sd3_mmdit_state_dict())
    latent = {"samples": torch.zeros(1, 16, 8, 8)}

    def sample(positive, positive_extra):
        conds = [[positive, {"pooled_output": positive_extra["pooled_output"]}]]
        negatives = [[negative, {"pooled_output": negative_extra["pooled_output"]}]]
        (out,) = core_nodes.common_ksampler(model, 1, 2, 4.0, "euler", "simple", conds, negatives, latent)
        return out["samples"].float()

    image, core_image, blue_image = sample(red, red_extra), sample(core_red, core_red_extra), sample(blue, blue_extra)
    return {
        "model_class": type(model.model).__name__,
        "shape": list(red.shape),
        "pooled_shape": list(red_extra["pooled_output"].shape),
        "l_max_length": ours.tokenizer.clip_l.max_length,
        "g_max_length": ours.tokenizer.clip_g.max_length,
        "cond_vs_core": diff(red, core_red),
        "pooled_vs_core": diff(red_extra["pooled_output"], core_red_extra["pooled_output"]),
        "plain_shape": list(plain.shape),
        "plain_vs_core": max(diff(plain, core_plain), diff(plain_pooled, core_plain_pooled)),
        "core_late_words_change": diff(core_red, core_blue),
        "clip_l_late_words_change": diff(red[:, 150:248, :768], blue[:, 150:248, :768]),
        "clip_g_late_words_change": diff(red[:, 150:248, 768:2048], blue[:, 150:248, 768:2048]),
        "pooled_late_words_change": diff(red_extra["pooled_output"], blue_extra["pooled_output"]),
        "windows_shape": list(windows_red.shape),
        "windows_clip_l_vs_stretch": diff(windows_red[..., :768], red[..., :768]),
        "windows_clip_g_late_words_change": diff(windows_red[:, 150:248, 768:2048], windows_blue[:, 150:248, 768:2048]),
        "lora_changes": diff(red, lora_red),
        "image_vs_core": diff(image, core_image),
        "image_late_words_change": diff(image, blue_image),
        "image_finite": bool(torch.isfinite(image).all()),
    }


# ---------------------------------------------------------------------------------------------------------------
# Bad input through the nodes: each case's error type and message (tests/comfyui/test_comfyui_nodes.py checks them)


def scenario_bad_input():
    long_l = write_long_clip_l()
    narrow = write_long_clip_l("longclip-B-tiny.safetensors", width=512, projection=512)
    t5, clip_g = write_t5(), write_clip_g()
    write_file("t5xl-tiny.safetensors", lambda: tiny_models.t5_state_dict(width=2048))
    (loaded,) = run_node("LongCLIPLoader", clip_name=long_l)
    base, _ = sdxl_clip()
    (long_sdxl,) = run_node("LongCLIPSDXL", clip=base, long_clip_l=long_l, keep=20, ratio=4)
    cases = {
        "stretch a Long-CLIP-L": ("LongCLIPStretchKPS", {"clip": loaded, "keep": 20, "ratio": 4}),
        "stretch a long SDXL CLIP": ("LongCLIPStretchKPS", {"clip": long_sdxl, "keep": 20, "ratio": 4}),
        "stretch keep too large": ("LongCLIPStretchKPS", {"clip": base, "keep": 80, "ratio": 4}),
        "missing Long-CLIP file": ("LongCLIPLoader", {"clip_name": "longclip-L.pt"}),
        "path outside the folder": ("LongCLIPLoader", {"clip_name": "../../etc/"}),
        "Long-CLIP-B in the SDXL node": ("LongCLIPSDXL", {"clip": base, "long_clip_l": narrow, "keep": 20, "ratio": 4}),
        "clip_g_mode typo": ("LongCLIPSDXL", {"clip": base, "long_clip_l": long_l, "keep": 20, "ratio": 4,
                                              "clip_g_mode": "window"}),
        "windows on a long clip_g": ("LongCLIPSDXL", {"clip": long_sdxl, "long_clip_l": long_l, "keep": 20,
                                                      "ratio": 4, "clip_g_mode": "windows"}),
        "keep and ratio miss 248": ("LongCLIPSDXL", {"clip": base, "long_clip_l": long_l, "keep": 10, "ratio": 4}),
        "SD 1.x CLIP in the SDXL node": ("LongCLIPSDXL", {"clip": loaded, "long_clip_l": long_l, "keep": 20,
                                                          "ratio": 4}),
        "bigG as Flux clip_l": ("LongCLIPFluxLoader", {"clip_l_name": clip_g, "t5xxl_name": t5}),
        "T5-XL in the Flux loader": ("LongCLIPFluxLoader", {"clip_l_name": long_l, "t5xxl_name": "t5xl-tiny.safetensors"}),
        "CLIP as Flux t5xxl": ("LongCLIPFluxLoader", {"clip_l_name": long_l, "t5xxl_name": long_l}),
        "device typo": ("LongCLIPFluxLoader", {"clip_l_name": long_l, "t5xxl_name": t5, "device": "gpu"}),
        "CLIP-L as SD3 clip_g": ("LongCLIPSD3Loader", {"clip_l_name": long_l, "clip_g_name": long_l, "t5xxl_name": t5}),
        "missing long_clip_g": ("LongCLIPSDXL", {"clip": base, "long_clip_l": long_l, "keep": 20, "ratio": 4,
                                                 "long_clip_g": "longclip-g.safetensors"}),
        "77-position bigG as long_clip_g": ("LongCLIPSDXL", {"clip": base, "long_clip_l": long_l, "keep": 20,
                                                             "ratio": 4, "long_clip_g": clip_g}),
        "Long-CLIP-L as long_clip_g": ("LongCLIPSDXL", {"clip": base, "long_clip_l": long_l, "keep": 20, "ratio": 4,
                                                        "long_clip_g": long_l}),
        "windows with long_clip_g": ("LongCLIPSDXL", {"clip": base, "long_clip_l": long_l, "keep": 20, "ratio": 4,
                                                      "clip_g_mode": "windows", "long_clip_g": clip_g}),
        "SD3 clip_g_mode typo": ("LongCLIPSD3Loader", {"clip_l_name": long_l, "clip_g_name": clip_g, "t5xxl_name": t5,
                                                       "clip_g_mode": "Windows"}),
    }
    found = {}
    for case, (node, node_inputs) in cases.items():
        try:
            run_node(node, **node_inputs)
            found[case] = ["no error", ""]
        except Exception as error:
            found[case] = [type(error).__name__, str(error)]
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    collect = Collect()
    logging.getLogger().addHandler(collect)
    run_node("LongCLIPLoader", clip_name=narrow)  # the model it feeds is unknown here: loads, with a warning
    logging.getLogger().removeHandler(collect)
    found["Long-CLIP-B in the SD 1.x loader"] = ["warning", " ".join(m for m in collect.messages if "Long-CLIP" in m)]
    base_still_works, _ = encode(base, "a photo of a cat")  # a refused call leaves its input CLIP usable
    found["input CLIP still encodes"] = [list(base_still_works.shape), ""]
    return found


def scenario_server_models():
    """Files for the headless server test: tiny SD1.5- and SD3-shaped diffusion models, a 768-wide Long-CLIP-L, a
    tiny clip_g and T5."""
    unet_dir = WORK / "models" / "diffusion_models"
    unet_dir.mkdir(parents=True, exist_ok=True)
    save_file(tiny_models.sd15_unet_state_dict(), str(unet_dir / "tiny-sd15.safetensors"))
    save_file(tiny_models.sd3_mmdit_state_dict(), str(unet_dir / "tiny-sd3.safetensors"))
    return {"unet": "tiny-sd15.safetensors", "clip": write_long_clip_l(), "clip_g": write_clip_g(), "t5": write_t5()}


if __name__ == "__main__":
    results = {}
    for scenario in sys.argv[2:]:
        try:
            results[scenario] = globals()[f"scenario_{scenario}"]()
        except Exception:
            results[scenario] = {"error": traceback.format_exc()}
    print("RESULT " + json.dumps(results), flush=True)
