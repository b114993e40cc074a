"""Gradio demo: long prompt to image, stock CLIP vs Long-CLIP side by side.

Installed as ``longclip_diffusion.demo``; launched by ``longclip demo``. The app is wiring only:
prompt encoding lives in :mod:`longclip_diffusion.prompts`, pipelines in
:mod:`longclip_diffusion.pipelines`.

Importing this package is cheap (no gradio / torch import); :func:`build_demo` imports them.
"""

from .app import add_commands, build_demo, launch_demo

__all__ = ["add_commands", "build_demo", "launch_demo"]
