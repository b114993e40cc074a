"""Bad input to checkpoint reading, writing and stretching: files, folders, destinations, widths.

One table: each case builds its input in a temporary folder from tiny models, names the surface it goes through and
expects an error (type + a phrase of its one-line message); where the case is about a destination, it also checks that
what the user had is still there afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from longclip_diffusion import checkpoints, comfy_format
from longclip_diffusion.checkpoints import CheckpointError
from longclip_diffusion.cli import main
from longclip_diffusion.files import DestinationExistsError
from longclip_diffusion.positions import stretch_positions, stretch_text_encoder
from longclip_diffusion.testing import clip_text_config, random_openai_text_state_dict, random_text_encoder

FIXTURES = Path(os.environ.get("LONGCLIP_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))
REFERENCE = FIXTURES / "longclip-reference-tiny.safetensors"


def tiny_encoder(long: bool = False, with_projection: bool = False):
    return random_text_encoder(clip_text_config(), with_projection=with_projection, long=long)


def text_model_state_dict() -> dict:
    """A tiny encoder in the ComfyUI/transformers single-file layout (``text_model.*``), without config metadata."""
    return {"text_model." + k.removeprefix("text_model."): v for k, v in tiny_encoder().state_dict().items()}


def write(tmp_path: Path, name: str, state_dict: dict, metadata: dict | None = None) -> Path:
    path = tmp_path / name
    save_file(state_dict, str(path), metadata=metadata)
    return path


def without(state_dict: dict, *keys: str) -> dict:
    return {k: v for k, v in state_dict.items() if k not in keys}


def replaced(state_dict: dict, **tensors) -> dict:
    return {**state_dict, **{k.replace("__", "."): v for k, v in tensors.items()}}


class Evil:
    def __reduce__(self):
        return (exec, ("open('pwned', 'w').write('pwned')",))


def hf_folder(tmp_path: Path, name: str = "hf") -> Path:
    folder = tmp_path / name
    tiny_encoder(long=True).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Builders: each takes (tmp_path, monkeypatch) and returns the call (and optionally a check of what survived).


def missing_path(tmp_path, _):
    return lambda: checkpoints.load_text_encoder(tmp_path / "nope.safetensors")


def missing_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lambda: checkpoints.load_text_encoder("./models/longclip-L")


def hub_id_not_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return lambda: checkpoints.load_text_encoder("someone/missing-longclip")


def empty_file(suffix):
    def build(tmp_path, _):
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        return lambda: checkpoints.load_text_encoder(tmp_path / f"empty{suffix}")
    return build


def truncated_safetensors(tmp_path, _):
    path = write(tmp_path, "full.safetensors", random_openai_text_state_dict())
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:4000])
    return lambda: checkpoints.load_text_encoder(tmp_path / "cut.safetensors")


def truncated_pickle(tmp_path, _):
    torch.save(random_openai_text_state_dict(), tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:5000])
    return lambda: checkpoints.load_text_encoder(tmp_path / "cut.pt")


def text_file(tmp_path, _):
    (tmp_path / "notes.pt").write_text("These are my notes, not a checkpoint.\n")
    return lambda: checkpoints.load_text_encoder(tmp_path / "notes.pt")


def image_file(name, head):
    def build(tmp_path, _):
        (tmp_path / name).write_bytes(head + bytes(range(256)) * 4)
        return lambda: checkpoints.load_text_encoder(tmp_path / name)
    return build


def pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"positional_embedding": Evil()}, tmp_path / "evil.pt")
    return lambda: checkpoints.read_state_dict(tmp_path / "evil.pt"), lambda: not (tmp_path / "pwned").exists()


def hf_folder_with_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = hf_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"text_model.embeddings.position_embedding.weight": Evil()}, folder / "pytorch_model.bin")
    return lambda: checkpoints.load_text_encoder(folder), lambda: not (tmp_path / "pwned").exists()


def hf_folder_without_weights(tmp_path, _):
    folder = hf_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    return lambda: checkpoints.load_text_encoder(folder)


def hf_folder_with_truncated_weights(tmp_path, _):
    folder = hf_folder(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    return lambda: checkpoints.load_text_encoder(folder)


def hf_folder_of_another_width(tmp_path, _):
    folder = hf_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64, "num_attention_heads": 4}))
    return lambda: checkpoints.load_text_encoder(folder)


def empty_folder(tmp_path, _):
    (tmp_path / "empty").mkdir()
    return lambda: checkpoints.load_text_encoder(tmp_path / "empty")


def folder_with_a_weights_file_only(tmp_path, _):
    (tmp_path / "downloads").mkdir()
    write(tmp_path / "downloads", "longclip-L.safetensors", random_openai_text_state_dict())
    return lambda: checkpoints.load_text_encoder(tmp_path / "downloads")


def unet_folder(tmp_path, _):
    folder = tmp_path / "unet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4}))
    write(folder, "model.safetensors", {"conv_in.weight": torch.zeros(4, 4, 3, 3)})
    return lambda: checkpoints.load_text_encoder(folder)


def broken_config_json(tmp_path, _):
    folder = hf_folder(tmp_path)
    (folder / "config.json").write_text('{"model_type": "clip_text_model",')
    return lambda: checkpoints.load_text_encoder(folder)


def pickled(obj):
    def build(tmp_path, _):
        torch.save(obj, tmp_path / "odd.pt")
        return lambda: checkpoints.load_text_encoder(tmp_path / "odd.pt")
    return build


def openai_file(state_dict_fn, with_projection=False):
    def build(tmp_path, _):
        path = write(tmp_path, "longclip.safetensors", state_dict_fn())
        return lambda: checkpoints.load_text_encoder(path, with_projection=with_projection)
    return build


def layer_gap():
    sd = random_openai_text_state_dict(layers=4)
    return {k: v for k, v in sd.items() if not k.startswith("transformer.resblocks.2.")}


def text_model_file(state_dict_fn, metadata=None):
    def build(tmp_path, _):
        path = write(tmp_path, "clip_l.safetensors", state_dict_fn(), metadata)
        return lambda: checkpoints.load_text_encoder(path)
    return build


def config_metadata(**changes) -> dict:
    config = clip_text_config(max_position_embeddings=77).to_dict()
    return {checkpoints.CONFIG_METADATA_KEY: json.dumps({**config, **changes})}


def foreign_safetensors(tmp_path, _):
    path = write(tmp_path, "vae.safetensors", {"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)})
    return lambda: checkpoints.load_text_encoder(path)


def clip_model_from_text_only(tmp_path, _):
    path = write(tmp_path, "text-only.safetensors", random_openai_text_state_dict())
    return lambda: checkpoints.load_clip_model(path)


# Destinations


def existing_file_destination(writer):
    def build(tmp_path, _):
        destination = tmp_path / f"mine{'.pt' if writer == 'openai' else '.safetensors'}"
        destination.write_bytes(b"the user's file")
        calls = {
            "comfy": lambda: checkpoints.save_comfy_file(tiny_encoder(long=True), destination),
            "openai": lambda: checkpoints.save_openai_file(tiny_encoder(long=True, with_projection=True), destination),
            "state_dict": lambda: comfy_format.save_comfy_state_dict(
                comfy_format.comfy_text_state_dict(tiny_encoder(long=True)), destination
            ),
            "convert": lambda: checkpoints.convert(REFERENCE, destination),
        }
        return calls[writer], lambda: destination.read_bytes() == b"the user's file"
    return build


def existing_diffusers_folder(tmp_path, _):
    destination = tmp_path / "out"
    (destination / "text_encoder").mkdir(parents=True)
    (destination / "text_encoder" / "my-notes.txt").write_text("keep me")
    return (
        lambda: checkpoints.convert(REFERENCE, destination),
        lambda: (destination / "text_encoder" / "my-notes.txt").read_text() == "keep me",
    )


def existing_tokenizer_only(tmp_path, _):
    destination = tmp_path / "out"
    (destination / "tokenizer").mkdir(parents=True)
    return (
        lambda: checkpoints.save_diffusers(tiny_encoder(long=True), destination),
        lambda: not (destination / "text_encoder").exists(),
    )


def folder_where_a_file_goes(tmp_path, _):
    (tmp_path / "out.safetensors").mkdir()
    return lambda: checkpoints.convert(REFERENCE, tmp_path / "out.safetensors", overwrite=True)


def file_where_a_folder_goes(tmp_path, _):
    (tmp_path / "out").write_text("a file")
    return lambda: checkpoints.convert(REFERENCE, tmp_path / "out", overwrite=True)


def disk_full(error):
    def build(tmp_path, monkeypatch):
        destination = tmp_path / "long.safetensors"
        destination.write_bytes(b"previous")

        def full_disk(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"half")
            raise error

        monkeypatch.setattr(checkpoints, "save_file", full_disk)
        return (
            lambda: checkpoints.save_comfy_file(tiny_encoder(long=True), destination, overwrite=True),
            lambda: destination.read_bytes() == b"previous" and sorted(tmp_path.iterdir()) == [destination],
        )
    return build


def disk_full_in_diffusers_folder(tmp_path, monkeypatch):
    destination = tmp_path / "out"
    checkpoints.save_diffusers(tiny_encoder(long=True), destination)
    before = (destination / "text_encoder" / "config.json").read_text()

    def full_disk(tokenizer, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "save_tokenizer", full_disk)
    return (
        lambda: checkpoints.save_diffusers(tiny_encoder(long=False), destination, overwrite=True),
        lambda: (destination / "text_encoder" / "config.json").read_text() == before
        and sorted(p.name for p in destination.iterdir()) == ["text_encoder", "tokenizer"],
    )


def unknown_target(tmp_path, _):
    return lambda: checkpoints.convert(REFERENCE, tmp_path / "out.onnx", to="onnx")


# Stretching and widths


def restretch_encoder(tmp_path, _):
    encoder = tiny_encoder(long=True)
    return lambda: stretch_text_encoder(encoder), lambda: encoder.config.max_position_embeddings == 248


def restretch_table(tmp_path, _):
    return lambda: stretch_positions(torch.zeros(248, 8))


def restretch_comfy_clip(tmp_path, _):
    long_l = comfy_format.with_prefix(comfy_format.comfy_text_state_dict(tiny_encoder(long=True)), "clip_l.transformer.")
    short_g = comfy_format.with_prefix(comfy_format.comfy_text_state_dict(tiny_encoder()), "clip_g.transformer.")
    return lambda: comfy_format.stretch_state_dict(long_l | short_g)


def restretch_cli(tmp_path, _):
    source = tmp_path / "long.safetensors"
    checkpoints.save_comfy_file(tiny_encoder(long=True), source)

    def run():
        if main(["stretch", str(source), str(tmp_path / "out.safetensors")]) == 2:
            raise SystemExit(2)

    return run, lambda: not (tmp_path / "out.safetensors").exists()


def width_mismatch(tmp_path, _):
    return lambda: checkpoints.check_text_encoder_width(tiny_encoder(long=True), 768, where="text_encoder of SD 1.5")


def width_mismatch_state_dict(tmp_path, _):
    state_dict = comfy_format.comfy_text_state_dict(tiny_encoder(long=True))
    return lambda: checkpoints.check_text_encoder_width(state_dict, 2048 - 1280, where="clip_l of an SDXL CLIP")


def bad_width_for_heads():
    return random_openai_text_state_dict(width=200, layers=1)


CASES = [
    # Missing sources
    pytest.param(missing_path, CheckpointError, "nope.safetensors: no such file", id="missing-file"),
    pytest.param(missing_relative_path, CheckpointError, "./models/longclip-L: no such file or folder", id="missing-path"),
    pytest.param(hub_id_not_here, CheckpointError, "not found as a Hub id", id="hub-id-looking-missing-path"),
    # Files that are no checkpoint
    pytest.param(empty_file(".safetensors"), CheckpointError, r"empty.safetensors: is empty \(0 bytes\)", id="empty-safetensors"),
    pytest.param(empty_file(".pt"), CheckpointError, r"empty.pt: is empty \(0 bytes\)", id="empty-pickle"),
    pytest.param(truncated_safetensors, CheckpointError, "cut.safetensors: not a readable safetensors file", id="truncated-safetensors"),
    pytest.param(truncated_pickle, CheckpointError, "cut.pt: cannot be read as a torch checkpoint", id="truncated-pickle"),
    pytest.param(text_file, CheckpointError, "notes.pt: is a text file, not a checkpoint", id="text-file"),
    pytest.param(image_file("photo.safetensors", b"\x89PNG\r\n\x1a\n"), CheckpointError, "is a PNG image", id="png-image"),
    pytest.param(image_file("photo.pt", b"\xff\xd8\xff\xe0"), CheckpointError, "is a JPEG image", id="jpeg-image"),
    pytest.param(pickled({}), CheckpointError, "holds no tensors", id="empty-state-dict"),
    pytest.param(pickled([1, 2, 3]), CheckpointError, "holds a list, not a state dict", id="pickled-list"),
    pytest.param(foreign_safetensors, CheckpointError, "expected a CLIP text encoder", id="foreign-safetensors"),
    # Pickled code: refused in one line, never run
    pytest.param(pickled_code, CheckpointError, r"refused to unpickle code in .*evil.pt .*use safetensors", id="pickled-code"),
    pytest.param(hf_folder_with_pickled_code, CheckpointError, r"refused to unpickle code in .*pytorch_model.bin", id="hf-bin-pickled-code"),
    # Folders
    pytest.param(hf_folder_without_weights, CheckpointError, "has config.json but no weights", id="hf-folder-no-weights"),
    pytest.param(hf_folder_with_truncated_weights, CheckpointError, "model.safetensors: not a readable safetensors file", id="hf-folder-truncated-weights"),
    pytest.param(hf_folder_of_another_width, CheckpointError, r"inconsistent shapes .* expected \[.*, 64\]", id="hf-config-weights-disagree"),
    pytest.param(empty_folder, CheckpointError, "a folder without config.json", id="empty-folder"),
    pytest.param(folder_with_a_weights_file_only, CheckpointError, "holds longclip-L.safetensors: pass that file", id="folder-with-file-only"),
    pytest.param(unet_folder, CheckpointError, "describes UNet2DConditionModel, not a CLIPTextModel", id="unet-folder"),
    pytest.param(broken_config_json, CheckpointError, "config.json: not a readable JSON config", id="broken-config-json"),
    # OpenAI layout: missing and inconsistent tensors, found vs expected
    pytest.param(openai_file(lambda: without(random_openai_text_state_dict(), "ln_final.weight")), CheckpointError, "without `ln_final.weight`", id="missing-ln-final"),
    pytest.param(openai_file(lambda: without(random_openai_text_state_dict(), "transformer.resblocks.0.mlp.c_fc.weight")), CheckpointError, "without `transformer.resblocks.0.mlp.c_fc.weight`", id="missing-c-fc-layer-0"),
    pytest.param(openai_file(lambda: without(random_openai_text_state_dict(), "transformer.resblocks.1.mlp.c_fc.weight")), CheckpointError, r"missing `transformer.resblocks.1.mlp.c_fc.weight` for a 64-wide, 2-layer", id="missing-c-fc-layer-1"),
    pytest.param(openai_file(lambda: without(random_openai_text_state_dict(), "token_embedding.weight")), CheckpointError, "without `token_embedding.weight`", id="missing-token-embedding"),
    pytest.param(openai_file(layer_gap), CheckpointError, r"block\(s\) \[2\] missing", id="layer-numbering-gap"),
    pytest.param(openai_file(lambda: replaced(random_openai_text_state_dict(), transformer__resblocks__1__attn__in_proj_weight=torch.zeros(384, 64))), CheckpointError, r"`transformer.resblocks.1.attn.in_proj_weight` is \[384, 64\], expected \[192, 64\]", id="inconsistent-width-in-a-layer"),
    pytest.param(openai_file(lambda: replaced(random_openai_text_state_dict(), positional_embedding=torch.zeros(248, 32))), CheckpointError, r"`positional_embedding` is \[248, 32\], expected \[248, 64\]", id="position-table-of-another-width"),
    pytest.param(openai_file(bad_width_for_heads), CheckpointError, "200 wide cannot be split into 3 attention heads", id="width-not-divisible-by-heads"),
    pytest.param(openai_file(lambda: replaced(random_openai_text_state_dict(), text_projection=torch.zeros(32, 32))), CheckpointError, r"`text_projection` is \[32, 32\], expected \[64, embed_dim\]", id="projection-of-another-width"),
    pytest.param(openai_file(lambda: without(random_openai_text_state_dict(), "text_projection"), with_projection=True), CheckpointError, "has no text projection", id="projection-needed-but-missing"),
    pytest.param(clip_model_from_text_only, CheckpointError, r"has no vision tower", id="clip-model-from-text-only"),
    # transformers/ComfyUI single files
    pytest.param(text_model_file(lambda: without(text_model_state_dict(), "text_model.encoder.layers.0.mlp.fc1.weight")), CheckpointError, "without `text_model.encoder.layers.0.mlp.fc1.weight`", id="text-model-missing-fc1"),
    pytest.param(text_model_file(lambda: replaced(text_model_state_dict(), text_model__encoder__layers__1__mlp__fc1__weight=torch.zeros(50, 32))), CheckpointError, r"`encoder.layers.1.mlp.fc1.weight` is \[50, 32\], expected \[37, 32\]", id="text-model-inconsistent-mlp"),
    pytest.param(text_model_file(text_model_state_dict, {checkpoints.CONFIG_METADATA_KEY: "{not json"}), CheckpointError, "metadata is not a CLIP text config", id="corrupt-config-metadata"),
    pytest.param(text_model_file(text_model_state_dict, config_metadata(num_hidden_layers=3)), CheckpointError, "missing `encoder.layers.2", id="metadata-more-layers-than-file"),
    pytest.param(text_model_file(text_model_state_dict, config_metadata(hidden_size=30, num_attention_heads=4)), CheckpointError, "metadata is not a valid CLIPTextConfig", id="metadata-heads-do-not-divide"),
    # Destinations: refused without overwrite, the user's data left as it was
    pytest.param(existing_file_destination("comfy"), DestinationExistsError, "mine.safetensors already exists.*--overwrite", id="comfy-file-exists"),
    pytest.param(existing_file_destination("openai"), DestinationExistsError, "mine.pt already exists", id="openai-file-exists"),
    pytest.param(existing_file_destination("state_dict"), DestinationExistsError, "mine.safetensors already exists", id="comfy-state-dict-exists"),
    pytest.param(existing_file_destination("convert"), DestinationExistsError, "mine.safetensors already exists", id="convert-file-exists"),
    pytest.param(existing_diffusers_folder, DestinationExistsError, r"out/text_encoder already exists", id="convert-folder-has-text-encoder"),
    pytest.param(existing_tokenizer_only, DestinationExistsError, r"out/tokenizer already exists", id="diffusers-folder-has-tokenizer"),
    pytest.param(folder_where_a_file_goes, IsADirectoryError, "out.safetensors is a folder", id="folder-where-file-goes"),
    pytest.param(file_where_a_folder_goes, NotADirectoryError, "out is a file; a diffusers output is a folder", id="file-where-folder-goes"),
    pytest.param(disk_full(OSError(errno.ENOSPC, "No space left on device")), OSError, r"could not write .*long.safetensors: no space left on device", id="disk-full-oserror"),
    pytest.param(disk_full(SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")), OSError, "no space left on device", id="disk-full-safetensors"),
    pytest.param(disk_full_in_diffusers_folder, OSError, r"could not write .*out: no space left on device", id="disk-full-diffusers"),
    pytest.param(unknown_target, ValueError, "Unknown target format 'onnx'", id="unknown-target-format"),
    # Stretching an encoder that is already long
    pytest.param(restretch_encoder, ValueError, "already has 248 positions; KPS stretches a 77-position CLIP", id="restretch-encoder"),
    pytest.param(restretch_table, ValueError, "already has 248 positions", id="restretch-table"),
    pytest.param(restretch_comfy_clip, ValueError, "clip_l: The position table already has 248 positions", id="restretch-comfy-clip"),
    pytest.param(restretch_cli, SystemExit, "2", id="restretch-cli"),
    # Model mismatches
    pytest.param(width_mismatch, CheckpointError, "text_encoder of SD 1.5: the text encoder is 32 wide but the model reads 768", id="width-mismatch-sd15"),
    pytest.param(width_mismatch_state_dict, CheckpointError, "is 32 wide but the model reads 768", id="width-mismatch-sdxl-clip-l"),
]


@pytest.mark.parametrize("build, error, phrase", CASES)
def test_bad_checkpoint_input(tmp_path, monkeypatch, build, error, phrase):
    if not REFERENCE.is_file():
        pytest.skip(f"fixture {REFERENCE} missing")
    built = build(tmp_path, monkeypatch)
    call, survived = built if isinstance(built, tuple) else (built, None)
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert re.search(phrase, message), message
    assert "\n" not in message, message  # one line
    if survived is not None:
        assert survived(), "the user's data was changed by a failed call"


def test_restretch_cli_says_why_on_one_line(tmp_path, capsys):
    source = tmp_path / "long.safetensors"
    checkpoints.save_comfy_file(tiny_encoder(long=True), source)
    assert main(["stretch", str(source), str(tmp_path / "out.safetensors")]) == 2
    error = capsys.readouterr().err.strip()
    assert "already has 248 positions" in error and len(error.splitlines()) == 1
    assert load_file(str(source))  # the source is untouched
