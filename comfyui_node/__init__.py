"""Long-CLIP for SD 1.x, SDXL, SD3 and Flux in ComfyUI: 248-token prompts. Copy or link this folder into
ComfyUI/custom_nodes/ (or clone the whole repository there)."""

import os
import sys

try:
    import longclip_diffusion  # noqa: F401
except ImportError as error:
    # longclip-diffusion is not on PyPI: it is installed from the repository this folder came from.
    repository = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if not os.path.isfile(os.path.join(repository, "pyproject.toml")):
        repository = "/path/to/longclip-diffusion"  # this folder was copied alone: point at a clone of the repository
    raise ImportError(
        "The Long-CLIP nodes need the longclip-diffusion library in the Python that runs ComfyUI "
        f"(missing: {error.name}). Install it from the repository: {sys.executable} -m pip install -e {repository}"
    ) from error

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES


class LongCLIPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> LongCLIPExtension:
    return LongCLIPExtension()
