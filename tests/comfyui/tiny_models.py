"""Small checkpoints with real ComfyUI key names and shapes, built in code (torch + safetensors only).

ComfyUI detects models by key names and shapes. Text encoders: a file with ``text_model.encoder.layers.0`` (and
``layers.1``, needed for the 248-position detection) but no layer 22/30 is CLIP-L; the widths and depth of CLIP-L
(768, 12) and CLIP-G (1280, 32) are fixed JSON configs in core loaders, so only full-size files reload in core
``CLIPLoader``; our nodes pass the file's own shapes and accept narrow/shallow ones. A UNet with SD1.5's
``model_channels`` 320 and ``context_dim`` 768 but a single level is detected as SD15.
"""

from __future__ import annotations

import torch

VOCAB = 49408


def openai_text_state_dict(width=768, layers=3, intermediate=256, positions=248, projection=768, seed=0, dtype=torch.float16):
    """A Long-CLIP text tower in the reference layout whose two position tables differ."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.02):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    sd = {
        "token_embedding.weight": rand(VOCAB, width),
        "positional_embedding": rand(positions, width, scale=0.01),
        "positional_embedding_res": rand(positions, width, scale=0.01) * 3,
        "ln_final.weight": torch.ones(width, dtype=dtype),
        "ln_final.bias": torch.zeros(width, dtype=dtype),
        "text_projection": rand(width, projection),
        "logit_scale": torch.tensor(4.6052, dtype=dtype),
    }
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd.update(
            {
                p + "attn.in_proj_weight": rand(3 * width, width),
                p + "attn.in_proj_bias": rand(3 * width),
                p + "attn.out_proj.weight": rand(width, width),
                p + "attn.out_proj.bias": rand(width),
                p + "ln_1.weight": torch.ones(width, dtype=dtype),
                p + "ln_1.bias": torch.zeros(width, dtype=dtype),
                p + "ln_2.weight": torch.ones(width, dtype=dtype),
                p + "ln_2.bias": torch.zeros(width, dtype=dtype),
                p + "mlp.c_fc.weight": rand(intermediate, width),
                p + "mlp.c_fc.bias": rand(intermediate),
                p + "mlp.c_proj.weight": rand(width, intermediate),
                p + "mlp.c_proj.bias": rand(width),
            }
        )
    return sd


def comfy_text_state_dict(width=1280, layers=3, intermediate=256, positions=77, seed=1, dtype=torch.float16):
    """A CLIP text encoder in ComfyUI/transformers layout (``text_model.*``, square ``text_projection.weight``)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.02):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    t = "text_model."
    sd = {
        t + "embeddings.token_embedding.weight": rand(VOCAB, width),
        t + "embeddings.position_embedding.weight": rand(positions, width, scale=0.01),
        t + "final_layer_norm.weight": torch.ones(width, dtype=dtype),
        t + "final_layer_norm.bias": torch.zeros(width, dtype=dtype),
        "text_projection.weight": rand(width, width),
    }
    for i in range(layers):
        p = f"{t}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{p}self_attn.{name}.weight"] = rand(width, width)
            sd[f"{p}self_attn.{name}.bias"] = rand(width)
        for name in ("layer_norm1", "layer_norm2"):
            sd[f"{p}{name}.weight"] = torch.ones(width, dtype=dtype)
            sd[f"{p}{name}.bias"] = torch.zeros(width, dtype=dtype)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rand(intermediate, width), rand(intermediate)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rand(width, intermediate), rand(width)
    return sd


def sd15_unet_state_dict(seed=2, dtype=torch.float16):
    """An SD1.5-shaped UNet with one level (model_channels 320, context_dim 768), keys as in an LDM checkpoint."""
    # ComfyUI's own UNet class gives the exact key set; imported here because only ComfyUI's venv has it.
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import comfy.ops

    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
        channel_mult=[1], num_heads=8, transformer_depth=[1], transformer_depth_middle=1, context_dim=768,
        use_linear_in_transformer=False, use_spatial_transformer=True, transformer_depth_output=[1, 1], legacy=False,
        dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init,
    )
    sd = {}
    for key, value in unet.state_dict().items():
        sd["model.diffusion_model." + key] = (torch.randn(value.shape) * 0.02).to(dtype)
    return sd


def t5_state_dict(width=4096, layers=1, heads=2, head_width=16, feed_forward=64, seed=6, dtype=torch.float16):
    """A T5 v1.1 encoder (gated-gelu) in ComfyUI's t5xxl layout (``shared.weight``, ``encoder.block.N.…``), full
    vocabulary (T5's tokenizer ids) and width 4096 (what SD3's joint sequence and Flux's txt_in read) but tiny inside."""
    import json
    import os

    import comfy.ops
    import comfy.text_encoders.t5

    with open(os.path.join(os.path.dirname(comfy.text_encoders.t5.__file__), "t5_config_xxl.json")) as handle:
        config = json.load(handle)
    config.update(d_model=width, num_layers=layers, num_heads=heads, d_kv=head_width, d_ff=feed_forward)
    torch.manual_seed(seed)
    model = comfy.text_encoders.t5.T5(config, torch.float32, "cpu", comfy.ops.disable_weight_init)
    sd = {}
    for key, value in model.state_dict().items():
        scale = 1.0 if key.endswith("layer_norm.weight") else 0.05
        sd[key] = (torch.ones(value.shape) if scale == 1.0 else torch.randn(value.shape) * scale).to(dtype)
    return sd


def sd3_mmdit_state_dict(seed=7, dtype=torch.float16):
    """An SD3-shaped MMDiT with one joint block (hidden 64; 16 latent channels, context 4096, pooled 2048), keys as in
    an SD3 checkpoint; ComfyUI detects it as SD3 (``joint_blocks.0.context_block.attn.qkv.weight``)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    torch.manual_seed(seed)
    model = MMDiT(
        patch_size=2, in_channels=16, out_channels=16, depth=1, adm_in_channels=2048,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64}},
        pos_embed_max_size=8, num_patches=64, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init,
    )
    return {"model.diffusion_model." + key: (torch.randn(value.shape) * 0.05).to(dtype) for key, value in model.state_dict().items()}


def flux_model(seed=8):
    """ComfyUI's Flux model (``model_base.Flux`` under a ModelPatcher, fp32, CPU) with tiny inner sizes (hidden 64, one
    double and one single block) and Flux's interfaces: 16 latent channels, T5 context 4096, CLIP-L pooled 768,
    guidance. ComfyUI picks the family from the config (``model_config_from_unet_config``); its detection from a file
    fixes hidden 3072 (≈ 400 M parameters even with one block), so this one is built in memory."""
    import comfy.model_detection
    import comfy.model_patcher

    config = {
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2, "vec_in_dim": 768,
        "context_in_dim": 4096, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 1, "depth": 1,
        "depth_single_blocks": 1, "axes_dim": [16, 24, 24], "theta": 10000, "qkv_bias": True, "guidance_embed": True,
    }
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    torch.manual_seed(seed)
    weights = model.diffusion_model.state_dict()
    model.diffusion_model.load_state_dict({key: torch.randn(value.shape) * 0.05 for key, value in weights.items()})
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
