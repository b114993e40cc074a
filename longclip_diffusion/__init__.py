"""Long-CLIP for Stable Diffusion and SDXL: prompts up to 248 tokens, no retraining of the image model.

Modules: ``positions`` (KPS stretching), ``checkpoints`` (formats in and out), ``tokenizer`` (CLIP BPE, offline),
``prompts`` (weighting and encoding), ``pipelines`` (diffusers), ``training`` (KPS + PCM fine-tuning),
``demo`` (Gradio), ``cli`` (the ``longclip`` command).
"""

__version__ = "0.1.0"
