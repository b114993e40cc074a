"""How users get the nodes running (no ComfyUI needed): longclip-diffusion is not on PyPI, so the import error, the
READMEs and the Comfy registry metadata all give the install command from the repository."""

import importlib.util
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[2]


def test_missing_library_names_the_install_command_for_this_python_and_repository(monkeypatch):
    monkeypatch.setitem(sys.modules, "longclip_diffusion", None)  # import fails as in a ComfyUI venv without it
    spec = importlib.util.spec_from_file_location(
        "longclip_nodes_without_library", REPO / "comfyui_node" / "__init__.py",
        submodule_search_locations=[str(REPO / "comfyui_node")],
    )
    with pytest.raises(ImportError) as raised:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    message = str(raised.value)
    assert f"{sys.executable} -m pip install -e {REPO}" in message
    assert "missing: longclip_diffusion" in message and "\n" not in message


def test_no_document_offers_a_pypi_install():
    for path in (REPO / "README.md", REPO / "comfyui_node" / "README.md", REPO / "pyproject.toml"):
        assert "pip install longclip-diffusion" not in path.read_text(), path
    install = (REPO / "comfyui_node" / "README.md").read_text()
    assert "-m pip install -e /path/to/longclip-diffusion" in install
    assert "-m pip install -e ComfyUI/custom_nodes/" in install  # a registry / Manager install


def test_registry_metadata_matches_the_nodes():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    comfy = project["tool"]["comfy"]
    assert comfy["includes"] == ["comfyui_node"] and (REPO / "__init__.py").is_file()
    assert "-m pip install -e ComfyUI/custom_nodes/" in (REPO / "pyproject.toml").read_text()  # the comment above it
    for family in ("SD 1.x", "SDXL", "SD3", "Flux"):  # each family has a loader node (tests/comfyui/test_comfyui_nodes)
        assert family in comfy["DisplayName"]
    assert project["project"]["urls"]["Repository"].startswith("https://github.com/")
