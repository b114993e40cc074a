"""Long-CLIP nodes (ComfyUI V3 API). Wiring only: formats and KPS live in ``longclip_diffusion``."""

from __future__ import annotations

import logging
import os
import types

import comfy.model_management
import comfy.sd
import comfy.sdxl_clip
import comfy.text_encoders.flux
import comfy.text_encoders.sd3_clip
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from longclip_diffusion import comfy_format, positions, prompts

from . import inputs

CATEGORY = "loaders/Long-CLIP"
FOLDER = "text_encoders"  # ComfyUI maps the legacy models/clip folder here too
CLIP_L, CLIP_G, T5 = "clip_l.transformer.", "clip_g.transformer.", "t5xxl.transformer."  # prefixes in CLIP.get_sd()
CLIP_G_MODES = ["stretch", "windows"]
NO_FILE = "none"  # an optional file combo left unset
DEVICES = ["default", "cpu"]


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


def encoder_path(name: str, input_name: str) -> str:
    return inputs.encoder_path(name, folder_paths.get_folder_paths(FOLDER), input_name)


def encoder_input(name: str, tooltip: str | None = None):
    return io.Combo.Input(name, options=encoder_names(), tooltip=tooltip)


def t5_input():
    return io.Combo.Input(
        "t5xxl_name", options=folder_paths.get_filename_list(FOLDER), tooltip="T5-XXL, e.g. t5xxl_fp16.safetensors."
    )


def device_input():
    return io.Combo.Input("device", options=DEVICES, default="default", optional=True)


def device_options(device: str) -> dict:
    inputs.check_choice(device, DEVICES, "device")
    cpu = torch.device("cpu")
    return {"load_device": cpu, "offload_device": cpu} if device == "cpu" else {}


class WindowedClipG(comfy.sdxl_clip.SDXLClipG):
    """clip_g keeping its own (77) positions while clip_l reads the whole prompt in one 248-position pass: it reads the
    same tokens in windows ``[start, 75 tokens, end, pad…]``, laid onto clip_l's positions token by token
    (``longclip_diffusion.prompts.window_layout``). Weighting is core's, per window; pooled is the first window's, as
    in core SDXL."""

    def encode_token_weights(self, token_weight_pairs):
        start, end, pad = (self.special_tokens[name] for name in ("start", "end", "pad"))
        window_length = self.transformer.text_model.embeddings.position_embedding.num_embeddings
        windows, layouts = [], []
        for batch in token_weight_pairs:  # each as long as clip_l's: [start, tokens…, end, pad…]
            count = next(i for i, item in enumerate(batch) if i > 0 and isinstance(item[0], int) and item[0] == end) - 1
            window, slot = prompts.window_layout(count, len(batch), window_length)
            layouts.append((window + len(windows), slot))
            special = [(token, 1.0) for token in (start, end, pad)]
            windows += prompts.split_into_windows(batch[1 : 1 + count], window_length, *special)
        out, pooled = super().encode_token_weights(windows)
        out = out.reshape(len(windows), window_length, -1)
        return torch.cat([out[window, slot] for window, slot in layouts]).unsqueeze(0), pooled


def with_windowed_clip_g(model_class):
    """``model_class`` (SDXL's or SD3's text model) whose clip_g reads in windows (:class:`WindowedClipG`)."""

    class Windowed(model_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.clip_g.__class__ = WindowedClipG  # same weights and state; only encode_token_weights differs

    return Windowed


def new_clip(model_class, tokenizer_class, state_dict, token_length=None, model_options=None):
    """A core CLIP of ``model_class``/``tokenizer_class`` holding ``state_dict`` (``CLIP.get_sd()`` layout), under
    ComfyUI's model management. Its encoders take the shapes in ``state_dict`` (e.g. 248 positions; any width and
    depth, which core's fixed configs do not) and its CLIP tokenizers read each encoder's positions, or
    ``token_length`` for all."""
    prefixes = comfy_format.encoder_prefixes(state_dict)
    configs = {name: comfy_format.text_model_config(state_dict, prefix) for name, prefix in prefixes.items()}
    options = {f"{name}_model_config": config for name, config in configs.items()}
    t5 = comfy_format.without_prefix(state_dict, T5)
    if t5:
        options["t5xxl_model_config"] = inputs.t5_config(t5)
    clip = comfy.sd.CLIP(
        types.SimpleNamespace(clip=model_class, tokenizer=tokenizer_class, params={}),
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        tokenizer_data={
            f"{name}_max_length": token_length or config["max_position_embeddings"] for name, config in configs.items()
        },
        model_options={**options, **(model_options or {})},
        parameters=comfy.utils.calculate_parameters(state_dict),
    )
    clip.load_sd(state_dict, full_model=True)
    return clip


def rebuild_clip(clip, state_dict, model_class=None, token_length=None):
    """A new core CLIP of the same kind as ``clip`` (or of ``model_class``) holding ``state_dict``; clip skip and
    tokenizer options carried over."""
    new = new_clip(model_class or type(clip.cond_stage_model), type(clip.tokenizer), state_dict, token_length)
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
                encoder_input("clip_name"),
                device_input(),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip_name, device="default") -> io.NodeOutput:
        options = device_options(device)
        state_dict = comfy_format.load_comfy_text_encoder(encoder_path(clip_name, "clip_name"))
        width = state_dict[comfy_format.TABLE].shape[1]
        if width != inputs.SLOT_WIDTHS["clip_l"]:  # the model it feeds is not known here: warn, the sampler would fail
            logging.warning(
                "Long-CLIP Loader: %s is a %d-wide text encoder; SD 1.x (and the clip_l of SDXL, SD3, Flux) reads 768, "
                "so sampling with it will fail with a shape error. Use a Long-CLIP-L file (longclip-L.pt).",
                clip_name, width,
            )
        clip = comfy.sd.load_text_encoder_state_dicts(
            [state_dict],
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
            clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION,
            model_options={"model_config": comfy_format.text_model_config(state_dict), **options},
        )
        return io.NodeOutput(clip)


class LongCLIPSDXL(io.ComfyNode):
    """Turns an SDXL CLIP into a 248-token one: clip_l becomes Long-CLIP-L; clip_g is stretched with KPS
    ("stretch") or reads the prompt in 75-token windows laid onto the 248 positions ("windows"), or is replaced by a
    long (248-position) bigG file read as it is (long_clip_g). Pooled output stays clip_g's. Put LoRA loaders after
    this node."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongCLIPSDXL",
            display_name="Long-CLIP SDXL",
            category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                io.Clip.Input("clip", tooltip="The SDXL CLIP, e.g. from Load Checkpoint."),
                encoder_input("long_clip_l"),
                io.Int.Input("keep", default=20, min=0, max=75, tooltip="clip_g rows copied unchanged by KPS."),
                io.Int.Input("ratio", default=4, min=1, max=16, tooltip="KPS stretch factor for the other rows."),
                io.Combo.Input(
                    "clip_g_mode",
                    options=CLIP_G_MODES,
                    default="stretch",
                    optional=True,
                    tooltip="stretch: KPS to 248 positions, one pass (the reference recipe). windows: clip_g keeps "
                    "77 positions and reads 75-token windows; pooled output then sees only the first 75 tokens.",
                ),
                io.Combo.Input(
                    "long_clip_g",
                    options=[NO_FILE, *encoder_names()],
                    default=NO_FILE,
                    optional=True,
                    tooltip="A long (248-position) bigG, e.g. longclip-g.safetensors from `longclip train --export "
                    "comfy_g`, used as clip_g as it is (keep and ratio do not apply). none: the checkpoint's clip_g, "
                    "as clip_g_mode says.",
                ),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip, long_clip_l, keep, ratio, clip_g_mode="stretch", long_clip_g=NO_FILE) -> io.NodeOutput:
        inputs.check_choice(clip_g_mode, CLIP_G_MODES, "clip_g_mode")
        path = encoder_path(long_clip_l, "long_clip_l")
        g_path = None if long_clip_g == NO_FILE else encoder_path(long_clip_g, "long_clip_g")
        if g_path is not None and clip_g_mode == "windows":
            raise ValueError(
                f"clip_g_mode 'windows' reads the checkpoint's clip_g in 75-token windows, but long_clip_g "
                f"{long_clip_g!r} replaces it (read at its own positions): set clip_g_mode to stretch, or long_clip_g "
                "to none."
            )
        long_l = inputs.read_clip(path, "clip_l", "SDXL", "long_clip_l")
        length = long_l[comfy_format.TABLE].shape[0]
        long_g = None if g_path is None else inputs.read_long_clip_g(g_path, length, "long_clip_g")
        state_dict = clip_state_dict(clip)
        found = comfy_format.encoder_prefixes(state_dict)
        if found != {"clip_l": CLIP_L, "clip_g": CLIP_G} or any(key.startswith(T5) for key in state_dict):
            raise ValueError(f"Long-CLIP SDXL needs an SDXL CLIP (clip_l + clip_g); this one has {sorted(found)}.")
        replaced = ("clip_l.",) if long_g is None else ("clip_l.", "clip_g.")
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith(replaced)}
        state_dict.update(comfy_format.with_prefix(long_l, CLIP_L))
        if long_g is None:
            state_dict = clip_g_at_length(state_dict, clip_g_mode, keep, ratio, long_clip_l)
        else:  # "supplied", as the diffusers SDXL pipeline's bigg=<file>
            state_dict.update(comfy_format.with_prefix(long_g, CLIP_G))
        model_class = type(clip.cond_stage_model)
        if clip_g_mode == "windows":
            model_class = with_windowed_clip_g(model_class)
        return io.NodeOutput(rebuild_clip(clip, state_dict, model_class, token_length=length))


def clip_g_at_length(state_dict, mode, keep, ratio, clip_l_name):
    """``state_dict`` (Long-CLIP-L already in) with clip_g's position table as long as clip_l's: KPS-stretched, or
    kept when already that long; in "windows" mode unchanged (clip_g then reads 75-token windows)."""
    length = state_dict[CLIP_L + comfy_format.TABLE].shape[0]
    g_length = state_dict[CLIP_G + comfy_format.TABLE].shape[0]
    if mode == "windows":
        if g_length >= length:
            raise ValueError(
                f"clip_g already has {g_length} positions; clip_g_mode 'windows' is for a 77-position clip_g. "
                "Use 'stretch', which reads a long clip_g as it is."
            )
        return state_dict
    if g_length != length:
        state_dict = comfy_format.stretch_state_dict(state_dict, keep=keep, ratio=ratio, names=("clip_g",))
    stretched = state_dict[CLIP_G + comfy_format.TABLE].shape[0]
    if stretched != length:
        raise ValueError(
            f"keep={keep}, ratio={ratio} give clip_g {stretched} positions but {clip_l_name} has {length}; "
            "both must be equal (keep 20, ratio 4 give 248)."
        )
    return state_dict


class LongCLIPFluxLoader(io.ComfyNode):
    """Loads Long-CLIP-L + T5-XXL as a Flux CLIP (as core DualCLIPLoader, type flux): the pooled vector that
    conditions every Flux block is read from one 248-token pass; T5 is unchanged. Use with CLIPTextEncode or
    CLIPTextEncodeFlux."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongCLIPFluxLoader",
            display_name="Long-CLIP Flux Loader",
            category=CATEGORY,
            description=cls.__doc__,
            inputs=[encoder_input("clip_l_name", "Long-CLIP-L, any format."), t5_input(), device_input()],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip_l_name, t5xxl_name, device="default") -> io.NodeOutput:
        options = device_options(device)
        l_path, t5_path = encoder_path(clip_l_name, "clip_l_name"), encoder_path(t5xxl_name, "t5xxl_name")
        long_l = inputs.read_clip(l_path, "clip_l", "Flux", "clip_l_name")
        t5 = inputs.read_t5(t5_path, "Flux", "t5xxl_name")
        state_dict = {**comfy_format.with_prefix(long_l, CLIP_L), **comfy_format.with_prefix(t5, T5)}
        model_class = comfy.text_encoders.flux.flux_clip(**comfy.text_encoders.sd3_clip.t5_xxl_detect(t5))
        tokenizer_class = comfy.text_encoders.flux.FluxTokenizer
        return io.NodeOutput(new_clip(model_class, tokenizer_class, state_dict, model_options=options))


class LongCLIPSD3Loader(io.ComfyNode):
    """Loads Long-CLIP-L + CLIP-G (bigG) + T5-XXL as an SD3 CLIP (as core TripleCLIPLoader) whose CLIP part of the
    joint sequence is 248 tokens long: clip_g is KPS-stretched to 248 positions ("stretch", or used as is when the
    file already has 248) or reads 75-token windows laid onto them ("windows"). Use with CLIPTextEncode or
    CLIPTextEncodeSD3."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LongCLIPSD3Loader",
            display_name="Long-CLIP SD3 Loader",
            category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                encoder_input("clip_l_name", "Long-CLIP-L, any format."),
                encoder_input("clip_g_name", "CLIP-G (bigG), e.g. clip_g.safetensors, or a 248-position one."),
                t5_input(),
                io.Combo.Input(
                    "clip_g_mode",
                    options=CLIP_G_MODES,
                    default="stretch",
                    tooltip="stretch: KPS (keep 20, ratio 4) to 248 positions, one pass. windows: clip_g keeps 77 "
                    "positions and reads 75-token windows; its pooled output then sees only the first 75 tokens.",
                ),
                device_input(),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, clip_l_name, clip_g_name, t5xxl_name, clip_g_mode="stretch", device="default") -> io.NodeOutput:
        inputs.check_choice(clip_g_mode, CLIP_G_MODES, "clip_g_mode")
        options = device_options(device)
        paths = [encoder_path(name, input_name) for name, input_name in
                 ((clip_l_name, "clip_l_name"), (clip_g_name, "clip_g_name"), (t5xxl_name, "t5xxl_name"))]
        long_l = inputs.read_clip(paths[0], "clip_l", "SD3", "clip_l_name")
        clip_g = inputs.read_clip_g(paths[1], "SD3", "clip_g_name")
        state_dict = {**comfy_format.with_prefix(long_l, CLIP_L), **comfy_format.with_prefix(clip_g, CLIP_G)}
        kps = positions.StretchConfig()  # the reference recipe: keep 20, ratio 4 (77 → 248)
        state_dict = clip_g_at_length(state_dict, clip_g_mode, kps.keep, kps.ratio, clip_l_name)
        t5 = inputs.read_t5(paths[2], "SD3", "t5xxl_name")
        state_dict.update(comfy_format.with_prefix(t5, T5))
        model_class = comfy.text_encoders.sd3_clip.sd3_clip(**comfy.text_encoders.sd3_clip.t5_xxl_detect(t5))
        if clip_g_mode == "windows":
            model_class = with_windowed_clip_g(model_class)
        length = long_l[comfy_format.TABLE].shape[0]
        tokenizer_class = comfy.text_encoders.sd3_clip.SD3Tokenizer
        return io.NodeOutput(new_clip(model_class, tokenizer_class, state_dict, length, options))


class CLIPStretchKPS(io.ComfyNode):
    """Training-free knowledge-preserving stretch (KPS) of every text encoder in a CLIP: 77 → 248 positions
    with keep 20, ratio 4. A CLIP with an encoder that is already long (Long-CLIP, or stretched before) is refused."""

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


NODES = [
    LongCLIPLoader, LongCLIPSDXL, LongCLIPFluxLoader, LongCLIPSD3Loader, CLIPStretchKPS, PromptTokenCount, SaveLongCLIP
]
