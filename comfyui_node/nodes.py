"""Long-CLIP nodes (ComfyUI V3 API). Wiring only: formats and KPS live in ``longclip_diffusion``."""

from __future__ import annotations

import os
import types

import comfy.model_management
import comfy.sd
import comfy.sdxl_clip
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from longclip_diffusion import comfy_format, prompts

CATEGORY = "loaders/Long-CLIP"
FOLDER = "text_encoders"  # ComfyUI maps the legacy models/clip folder here too


def encoder_names() -> list[str]:
    """Files in models/text_encoders (and models/clip), plus transformers folders there (shown with a trailing /)."""
    names = list(folder_paths.get_filename_list(FOLDER))
    for root in folder_paths.get_folder_paths(FOLDER):
        if os.path.isdir(root):
            for entry in sorted(os.listdir(root)):
                folder = os.path.join(root, entry)
                if os.path.isfile(os.path.join(folder, "config.json")) or os.path.isfile(
                    os.path.join(folder, "text_encoder", "config.json")
                ):
                    names.append(entry + "/")
    return names


def encoder_path(name: str) -> str:
    if name.endswith("/"):
        for root in folder_paths.get_folder_paths(FOLDER):
            if os.path.isdir(os.path.join(root, name)):
                return os.path.join(root, name)
        raise FileNotFoundError(f"Long-CLIP folder '{name}' is not in any {FOLDER} folder any more; refresh the list.")
    return folder_paths.get_full_path_or_raise(FOLDER, name)


class SDXLClipGWindows(comfy.sdxl_clip.SDXLClipModel):
    """SDXL's two encoders where clip_l reads the whole prompt in one pass (Long-CLIP-L, 248 positions) and clip_g
    keeps its positions and reads the same tokens in windows ``[start, 75 tokens, end, pad…]``, laid onto clip_l's
    positions token by token (``longclip_diffusion.prompts.window_layout``). Weighting is core's, per window; pooled
    is the first window's, as in core SDXL."""

    def encode_token_weights(self, token_weight_pairs):
        l_out, _ = self.clip_l.encode_token_weights(token_weight_pairs["l"])
        start, end, pad = (self.clip_g.special_tokens[name] for name in ("start", "end", "pad"))
        window_length = self.clip_g.transformer.text_model.embeddings.position_embedding.num_embeddings
        windows, layouts = [], []
        for batch in token_weight_pairs["g"]:  # each as long as clip_l's: [start, tokens…, end, pad…]
            count = next(i for i, item in enumerate(batch) if i > 0 and isinstance(item[0], int) and item[0] == end) - 1
            window, slot = prompts.window_layout(count, len(batch), window_length)
            layouts.append((window + len(windows), slot))
            special = [(token, 1.0) for token in (start, end, pad)]
            windows += prompts.split_into_windows(batch[1 : 1 + count], window_length, *special)
        g_out, g_pooled = self.clip_g.encode_token_weights(windows)
        g_out = g_out.reshape(len(windows), window_length, -1)
        g_out = torch.cat([g_out[window, slot] for window, slot in layouts]).unsqueeze(0)
        return torch.cat([l_out, g_out.to(l_out)], dim=-1), g_pooled


def rebuild_clip(clip, state_dict, model_class=None, token_length=None):
    """A new core CLIP of the same kind as ``clip`` (or of ``model_class``) whose encoders take the shapes (e.g. 248
    positions) in ``state_dict``; its tokenizers read each encoder's positions, or ``token_length`` for all."""
    prefixes = comfy_format.encoder_prefixes(state_dict)
    configs = {name: comfy_format.text_model_config(state_dict, prefix) for name, prefix in prefixes.items()}
    target = types.SimpleNamespace(
        clip=model_class or type(clip.cond_stage_model), tokenizer=type(clip.tokenizer), params={}
    )
    new = comfy.sd.CLIP(
        target,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        tokenizer_data={
            f"{name}_max_length": token_length or config["max_position_embeddings"] for name, config in configs.items()
        },
        model_options={f"{name}_model_config": config for name, config in configs.items()},
        parameters=comfy.utils.calculate_parameters(state_dict),
    )
    new.load_sd(state_dict, full_model=True)
    new.layer_idx = clip.layer_idx
    new.tokenizer_options = dict(clip.tokenizer_options)
    return new


def clip_state_dict(clip):
    """The encoder weights of a CLIP, with LoRA patches merged (as core CLIPSave does)."""
    comfy.model_management.load_models_gpu([clip.load_model()], force_patch_weights=True)
    return clip.get_sd()


class LongCLIPLoader(io.ComfyNode):
    """Loads a Long-CLIP-L text encoder (OpenAI .pt/.safetensors with or without vision tower, transformers folder,
    ComfyUI single file) as a core CLIP, with the reference position table (rows ≥ 20 from positional_embedding_res)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongCLIPLoader",
            display_name="Long-CLIP Loader",
            category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                io.Combo.Input("clip_name", options=encoder_names()),
                io.Combo.Input("device", options=["default", "cpu"], optional=True),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip_name, device="default") -> io.NodeOutput:
        state_dict = comfy_format.load_comfy_text_encoder(encoder_path(clip_name))
        model_options = {"model_config": comfy_format.text_model_config(state_dict)}
        if device == "cpu":
            model_options["load_device"] = model_options["offload_device"] = torch.device("cpu")
        clip = comfy.sd.load_text_encoder_state_dicts(
            [state_dict],
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
            clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION,
            model_options=model_options,
        )
        return io.NodeOutput(clip)


class LongCLIPSDXL(io.ComfyNode):
    """Turns an SDXL CLIP into a 248-token one: clip_l becomes Long-CLIP-L; clip_g is stretched with KPS
    ("stretch") or reads the prompt in 75-token windows laid onto the 248 positions ("windows"). Pooled output stays
    clip_g's. Put LoRA loaders after this node."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongCLIPSDXL",
            display_name="Long-CLIP SDXL",
            category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                io.Clip.Input("clip", tooltip="The SDXL CLIP, e.g. from Load Checkpoint."),
                io.Combo.Input("long_clip_l", options=encoder_names()),
                io.Int.Input("keep", default=20, min=0, max=75, tooltip="clip_g rows copied unchanged by KPS."),
                io.Int.Input("ratio", default=4, min=1, max=16, tooltip="KPS stretch factor for the other rows."),
                io.Combo.Input(
                    "clip_g_mode",
                    options=["stretch", "windows"],
                    default="stretch",
                    optional=True,
                    tooltip="stretch: KPS to 248 positions, one pass (the reference recipe). windows: clip_g keeps "
                    "77 positions and reads 75-token windows; pooled output then sees only the first 75 tokens.",
                ),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip, long_clip_l, keep, ratio, clip_g_mode="stretch") -> io.NodeOutput:
        state_dict = clip_state_dict(clip)
        found = comfy_format.encoder_prefixes(state_dict)
        if set(found) != {"clip_l", "clip_g"}:
            raise ValueError(f"Long-CLIP SDXL needs an SDXL CLIP (clip_l + clip_g); this one has {sorted(found)}.")
        long_l = comfy_format.load_comfy_text_encoder(encoder_path(long_clip_l))
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("clip_l.")}
        state_dict.update(comfy_format.with_prefix(long_l, found["clip_l"]))
        length = long_l[comfy_format.TABLE].shape[0]
        if clip_g_mode == "windows":
            return io.NodeOutput(rebuild_clip(clip, state_dict, model_class=SDXLClipGWindows, token_length=length))
        if state_dict[found["clip_g"] + comfy_format.TABLE].shape[0] != length:
            state_dict = comfy_format.stretch_state_dict(state_dict, keep=keep, ratio=ratio, names=("clip_g",))
        stretched = state_dict[found["clip_g"] + comfy_format.TABLE].shape[0]
        if stretched != length:
            raise ValueError(
                f"keep={keep}, ratio={ratio} give clip_g {stretched} positions but {long_clip_l} has {length}; "
                "SDXL needs both equal (keep 20, ratio 4 give 248)."
            )
        return io.NodeOutput(rebuild_clip(clip, state_dict))


class CLIPStretchKPS(io.ComfyNode):
    """Training-free knowledge-preserving stretch (KPS) of every text encoder in a CLIP: 77 → 248 positions
    with keep 20, ratio 4."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongCLIPStretchKPS",
            display_name="CLIP Stretch (KPS)",
            category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                io.Clip.Input("clip"),
                io.Int.Input("keep", default=20, min=0, max=75, tooltip="Rows copied unchanged."),
                io.Int.Input("ratio", default=4, min=1, max=16, tooltip="Stretch factor for the other rows."),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip, keep, ratio) -> io.NodeOutput:
        state_dict = comfy_format.stretch_state_dict(clip_state_dict(clip), keep=keep, ratio=ratio)
        return io.NodeOutput(rebuild_clip(clip, state_dict))


class PromptTokenCount(io.ComfyNode):
    """Counts a prompt's CLIP tokens and shows what an encoder with `limit` positions would drop."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongCLIPPromptTokenCount",
            display_name="Prompt Token Count",
            category="utils/Long-CLIP",
            description=cls.__doc__,
            inputs=[
                io.String.Input("text", multiline=True),
                io.Int.Input("limit", default=77, min=3, max=4096, tooltip="Positions incl. start and end tokens."),
            ],
            outputs=[io.Int.Output(display_name="tokens"), io.String.Output(display_name="dropped_text")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, text, limit) -> io.NodeOutput:
        count = prompts.count_tokens(text, limit=limit)
        message = f"{count.num_tokens} tokens; a {limit}-position encoder keeps {min(count.num_tokens, limit - 2)}."
        if count.dropped_text:
            message += f"\nDropped: {count.dropped_text}"
        return io.NodeOutput(count.num_tokens, count.dropped_text, ui=ui.PreviewText(message))


class SaveLongCLIP(io.ComfyNode):
    """Saves the CLIP's Long-CLIP-L encoder (clip_l, LoRA merged) as one safetensors file in the output folder;
    move it to models/text_encoders and core Load CLIP reads it with the same outputs."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaveLongCLIP",
            display_name="Save Long-CLIP",
            category="advanced/model_merging",
            description=cls.__doc__,
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input("filename_prefix", default="text_encoders/longclip-L"),
                io.Combo.Input("encoder", options=["clip_l", "clip_g"], default="clip_l"),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, clip, filename_prefix, encoder) -> io.NodeOutput:
        state_dict = clip_state_dict(clip)
        found = comfy_format.encoder_prefixes(state_dict)
        if encoder not in found:
            raise ValueError(f"This CLIP has no {encoder} encoder; it has {sorted(found)}.")
        text_sd = comfy_format.without_prefix(state_dict, found[encoder])
        folder, filename, counter, _, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
        path = comfy_format.save_comfy_state_dict(text_sd, os.path.join(folder, f"{filename}_{counter:05}_.safetensors"))
        return io.NodeOutput(ui=ui.PreviewText(f"Saved {path}"))


NODES = [LongCLIPLoader, LongCLIPSDXL, CLIPStretchKPS, PromptTokenCount, SaveLongCLIP]
