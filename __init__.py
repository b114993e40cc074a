"""ComfyUI entry point when the whole repository is cloned into ComfyUI/custom_nodes/ (as the Comfy registry does).

The nodes live in comfyui_node/; copying or linking that folder alone works too. Not part of the pip package.
Outside ComfyUI (e.g. when pytest collects the repository) there is nothing to export.
"""

from importlib.util import find_spec

if find_spec("comfy_api") is not None:
    from .comfyui_node import comfy_entrypoint  # noqa: F401
