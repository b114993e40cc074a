"""The example workflows are consistent: UI and API versions hold the same nodes and their links resolve."""

import json
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[2] / "comfyui_node" / "workflows"


@pytest.mark.parametrize("name", ["longclip_sd15", "longclip_sdxl", "longclip_flux", "longclip_sd3"])
def test_ui_and_api_workflows_agree(name):
    api = json.loads((WORKFLOWS / f"{name}_api.json").read_text())
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    assert {int(k): v["class_type"] for k, v in api.items()} == {n["id"]: n["type"] for n in ui["nodes"]}
    ids = {n["id"] for n in ui["nodes"]}
    for link_id, source, _, target, _, _ in ui["links"]:
        assert source in ids and target in ids
        assert any(i.get("link") == link_id for n in ui["nodes"] if n["id"] == target for i in n["inputs"])
    linked = {(int(k), src) for k, v in api.items() for src in [x[0] for x in v["inputs"].values() if isinstance(x, list)]}
    assert linked == {(target, str(source)) for _, source, _, target, _, _ in ui["links"]}
    assert any(v["class_type"].startswith("LongCLIP") for v in api.values())
