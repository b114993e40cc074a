"""ComfyUI entry point when the whole repository is cloned into ComfyUI/custom_nodes/ (as the Comfy registry does).

The nodes live in comfyui_node/; copying or linking that folder alone works too. Not part of the pip package.
"""

from .comfyui_node import comfy_entrypoint  # noqa: F401
