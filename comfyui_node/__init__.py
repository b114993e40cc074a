"""Long-CLIP for SD 1.x and SDXL in ComfyUI: 248-token prompts. Copy or link this folder into ComfyUI/custom_nodes/."""

try:
    import longclip_diffusion  # noqa: F401
except ImportError as error:
    raise ImportError(
        "The Long-CLIP nodes need the longclip-diffusion library in ComfyUI's Python environment: "
        "run `pip install longclip-diffusion` (or `pip install -e <repo>`) with the python that starts ComfyUI."
    ) from error

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES


class LongCLIPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> LongCLIPExtension:
    return LongCLIPExtension()
