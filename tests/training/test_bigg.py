"""OpenCLIP / bigG bases: OpenCLIP-layout files (GELU, heads width/64 in text, OpenCLIP's vision heads) and the
transformers layout of LAION's bigG read as training bases; a long bigG trained here exported for SDXL (diffusers
``text_encoder_2``, ComfyUI clip_g, reference layout) and read back by our SDXL pipeline."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from longclip_diffusion import checkpoints, comfy_format
from longclip_diffusion.pipelines import LongCLIPStableDiffusionXLPipeline, apply_long_clip
from longclip_diffusion.testing import tiny_sdxl_components
from longclip_diffusion.training.export import export_model
from longclip_diffusion.training.model import context_length, prepare_for_training, text_encoder_from_clip
from longclip_diffusion.training.trainer import Trainer

TEXT_WIDTH, TEXT_LAYERS = 32, 13  # deeper than any OpenAI text tower: read as OpenCLIP (GELU) without being told


def tiny_bigg_clip(seed: int = 0, text_layers: int = TEXT_LAYERS) -> CLIPModel:
    """A two-tower CLIP shaped like OpenCLIP's bigG in every way that matters to readers: GELU in both towers, text
    heads width // 64 (one here), a text projection, 77 positions, real CLIP token ids; sized to SDXL's tiny test
    pipeline (text 32 wide, projection 32)."""
    torch.manual_seed(seed)
    text = dict(
        vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=text_layers,
        num_attention_heads=1, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )
    vision = dict(
        hidden_size=64, intermediate_size=200, num_hidden_layers=2, num_attention_heads=1, image_size=32,
        patch_size=8, hidden_act="gelu",
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=TEXT_WIDTH)).eval()


def features(model: CLIPModel) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[49406, 320, 1125, 539, 49407, 0], [49406, 2368, 49407, 0, 0, 0]])
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
        text = model.get_text_features(input_ids=ids).pooler_output
    return image, text


def test_openclip_file_reads_as_the_model_it_came_from(tmp_path):
    original = tiny_bigg_clip()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(checkpoints.transformers_to_openai(original), path)  # OpenCLIP's layout: the OpenAI key names
    loaded = checkpoints.load_clip_model(path)
    assert loaded.config.text_config.hidden_act == "gelu" and loaded.config.vision_config.hidden_act == "gelu"
    assert loaded.config.text_config.num_attention_heads == 1
    for got, expected in zip(features(loaded), features(original)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # read as QuickGELU (what the reader assumed before), the features differ: the test can tell the two apart
    quick = checkpoints.load_clip_model(path, hidden_act="quick_gelu")
    assert (features(quick)[1] - features(original)[1]).abs().max() > 1e-3


def test_twelve_layer_file_keeps_quickgelu_unless_told(tmp_path):
    original = tiny_bigg_clip(text_layers=12)
    path = tmp_path / "laion-b.safetensors"
    checkpoints.save_openai_file(original, path)
    assert checkpoints.load_clip_model(path).config.text_config.hidden_act == "quick_gelu"  # OpenAI's depth
    told = checkpoints.load_clip_model(path, hidden_act="gelu")
    torch.testing.assert_close(features(told)[1], features(original)[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        checkpoints.load_clip_model(path, hidden_act="relu")


def bigg_config() -> CLIPConfig:
    """LAION's CLIP-ViT-bigG-14-laion2B-39B-b160k config.json (the values that set shapes and arithmetic)."""
    text = dict(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )
    vision = dict(
        hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16, image_size=224,
        patch_size=14, hidden_act="gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=1280)


def test_full_size_bigg_shapes_give_bigg_config():
    """OpenCLIP's bigG file layout (made from the real config, on the meta device: no memory) → the real config:
    20 text heads (1280 / 64), 16 vision heads of 104 (not 1664 / 64 = 26), GELU, projection 1280."""
    with torch.device("meta"):
        model = CLIPModel(bigg_config())
    config, converted = checkpoints.openai_to_transformers(checkpoints.transformers_to_openai(model))
    expected = bigg_config()
    for part in ("text_config", "vision_config"):
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act"):
            assert getattr(getattr(config, part), key) == getattr(getattr(expected, part), key), (part, key)
    assert config.vision_config.image_size == 224 and config.vision_config.patch_size == 14
    assert config.projection_dim == 1280
    assert set(converted) >= {key for key in model.state_dict() if not key.endswith("position_ids")}


def test_transformers_bigg_folder_and_kps_to_248(tmp_path):
    """LAION's transformers layout (config.json + sharded safetensors) is read as is, and prepared like CLIP-L."""
    original = tiny_bigg_clip()
    original.save_pretrained(tmp_path / "bigg", max_shard_size="200KB")
    assert (tmp_path / "bigg" / "model.safetensors.index.json").is_file()
    loaded = checkpoints.load_clip_model(tmp_path / "bigg")
    for got, expected in zip(features(loaded), features(original)):
        torch.testing.assert_close(got, expected)
    table = loaded.text_model.embeddings.position_embedding.weight.detach().clone()
    prepare_for_training(loaded)
    assert context_length(loaded) == 248
    stretched = loaded.text_model.embeddings.position_embedding.weight.detach()
    torch.testing.assert_close(stretched[:20], table[:20])  # KPS keeps the first 20 rows
    torch.testing.assert_close(stretched[20 + 4 * 3], table[23])  # and places row 20 + i at 20 + 4 i


def test_long_bigg_trained_text_only_goes_into_sdxl(tmp_path, dataset, make_config):
    """Train a bigG-shaped CLIP (text-only, 2 steps), export it the three ways users need, and read each back in our
    SDXL pipeline: its text_encoder_2 gives the trained tower's hidden states and pooled projection."""
    config = make_config(tmp_path / "run", text_only=True, max_steps=2, export=["openai", "sdxl", "comfy_g"])
    trained = Trainer(config, tiny_bigg_clip(), torch.utils.data.Subset(dataset, range(16))).train()
    written = export_model(trained, tmp_path / "run" / "export", config.export)
    expected_encoder = text_encoder_from_clip(trained, with_projection=True)
    ids = torch.tensor([[49406] + [320 + i % 50 for i in range(150)] + [49407] + [0] * 96])  # 248, past 77
    with torch.no_grad():
        expected = expected_encoder(ids, output_hidden_states=True)
    assert (expected.text_embeds - tiny_bigg_clip().get_text_features(input_ids=ids[:, :77]).pooler_output).abs().max() > 0
    for source in (written["sdxl"], written["comfy_g"], written["openai"]):
        pipeline = apply_long_clip(LongCLIPStableDiffusionXLPipeline(**tiny_sdxl_components()), None, bigg=source)
        assert pipeline.config.long_clip_bigg_mode == "supplied", source
        bigg = pipeline.text_encoder_2
        assert isinstance(bigg, CLIPTextModelWithProjection) and bigg.config.hidden_act == "gelu"
        with torch.no_grad():
            got = bigg(ids, output_hidden_states=True)
        torch.testing.assert_close(got.text_embeds, expected.text_embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.hidden_states[-2], expected.hidden_states[-2], atol=1e-5, rtol=1e-5)
        embeds, _, pooled, _ = pipeline.encode_prompt("a red fox " * 60, device=torch.device("cpu"), do_classifier_free_guidance=False)
        assert embeds.shape == (1, 248, 16 + TEXT_WIDTH) and pooled.shape == (1, TEXT_WIDTH)
    # the SDXL folder: stock transformers reads text_encoder_2; tokenizer_2 pads with "!" (id 0) as SDXL's, at 248
    assert isinstance(CLIPTextModelWithProjection.from_pretrained(written["sdxl"] / "text_encoder_2"), CLIPTextModelWithProjection)
    tokenizer = CLIPTokenizer.from_pretrained(written["sdxl"] / "tokenizer_2")
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.model_max_length) == ("!", 0, 248)
    # the ComfyUI clip_g file: text_model.* with its projection and a 248-row table, as ComfyUI's clip_g reads
    state_dict = comfy_format.load_comfy_text_encoder(written["comfy_g"])
    assert comfy_format.PROJECTION in state_dict and state_dict[comfy_format.TABLE].shape == (248, TEXT_WIDTH)
    assert comfy_format.text_model_config(state_dict)["num_hidden_layers"] == TEXT_LAYERS


def test_sdxl_export_replaces_a_stock_sdxl_folders_text_encoder_2(tmp_path, dataset, make_config):
    """Stock diffusers: an SDXL folder with a 248-token CLIP-L and our export/sdxl copied over text_encoder_2/ and
    tokenizer_2/ encodes 248 tokens, bigG's half and the pooled vector from the trained tower."""
    import shutil

    from diffusers import StableDiffusionXLPipeline

    config = make_config(tmp_path / "run", text_only=True, max_steps=1, export=["sdxl"])
    trained = Trainer(config, tiny_bigg_clip(), torch.utils.data.Subset(dataset, range(8))).train()
    export = export_model(trained, tmp_path / "run" / "export", config.export)["sdxl"]
    StableDiffusionXLPipeline(**tiny_sdxl_components(long_clip=True)).save_pretrained(tmp_path / "sdxl")
    for part in checkpoints.SDXL_BIGG_PARTS:
        shutil.rmtree(tmp_path / "sdxl" / part)
        shutil.copytree(export / part, tmp_path / "sdxl" / part)
    pipeline = StableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl")
    prompt = "a red fox in the snow, " * 20  # past 77 tokens
    with torch.no_grad():
        embeds, _, pooled, _ = pipeline.encode_prompt(prompt, device=torch.device("cpu"), do_classifier_free_guidance=False)
        ids = pipeline.tokenizer_2(prompt, padding="max_length", max_length=248, truncation=True, return_tensors="pt").input_ids
        expected = text_encoder_from_clip(trained, with_projection=True)(ids, output_hidden_states=True)
    assert embeds.shape == (1, 248, 16 + TEXT_WIDTH)
    torch.testing.assert_close(embeds[0, :, 16:], expected.hidden_states[-2][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, expected.text_embeds, atol=1e-5, rtol=1e-5)
