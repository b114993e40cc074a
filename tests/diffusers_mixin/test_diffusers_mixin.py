"""diffusers' own ``PipelineTesterMixin`` run against both Long-CLIP pipelines (a documented local check).

diffusers' pipeline tests are not in its wheel, and CI cannot fetch them, so this module is skipped unless
``LONGCLIP_DIFFUSERS_SRC`` points at a checkout of the diffusers repository (its ``tests/`` folder is imported from
there; nothing of it is copied here). See docs/testing.md, section "diffusers' PipelineTesterMixin"::

    LONGCLIP_DIFFUSERS_SRC=/tmp/diffusers-src OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 \\
        python -m pytest tests/diffusers_mixin -q

The components are the project's tiny random models with the real CLIP tokenizer at 248 tokens
(:mod:`longclip_diffusion.testing`), as diffusers' fast tests build theirs.
"""

from __future__ import annotations

import importlib
import os
import sys
import unittest
from unittest import mock

import pytest
import torch

SOURCE = os.environ.get("LONGCLIP_DIFFUSERS_SRC")
if not SOURCE:
    pytest.skip("LONGCLIP_DIFFUSERS_SRC is not set (a diffusers repository checkout)", allow_module_level=True)

sys.path.insert(0, SOURCE)
for name in [name for name in sys.modules if name == "tests" or name.startswith("tests.")]:
    del sys.modules[name]  # another `tests` (this repository's) must not shadow diffusers'
common = importlib.import_module("tests.pipelines.test_pipelines_common")
pipeline_params = importlib.import_module("tests.pipelines.pipeline_params")

import diffusers.pipelines  # noqa: E402

from longclip_diffusion.pipelines import LongCLIPStableDiffusionPipeline, LongCLIPStableDiffusionXLPipeline  # noqa: E402
from longclip_diffusion.positions import stretch_text_encoder  # noqa: E402
from longclip_diffusion.testing import tiny_sd_components, tiny_sdxl_components  # noqa: E402

# test_encode_prompt_works_in_isolation reads encode_prompt's return names from the source of the class it finds by
# name in `diffusers.pipelines` (diffusers.utils.source_code_parsing_utils); make ours findable there.
for pipeline_class in (LongCLIPStableDiffusionPipeline, LongCLIPStableDiffusionXLPipeline):
    setattr(diffusers.pipelines, pipeline_class.__name__, pipeline_class)


def dummy_inputs(device, seed=0):
    generator = torch.Generator(device="cpu" if str(device).startswith("mps") else device).manual_seed(seed)
    return {
        "prompt": "A painting of a squirrel eating a burger",
        "generator": generator,
        "num_inference_steps": 2,
        "guidance_scale": 6.0,
        "output_type": "np",
    }


class FromPipeOffline(common.PipelineFromPipeTesterMixin):
    """diffusers' ``from_pipe`` checks; the config one reads hf-internal-testing pipelines from the Hub."""

    @unittest.skip("needs hf-internal-testing pipelines from the Hub; tests/test_from_pipe.py checks the config offline")
    def test_from_pipe_consistent_config(self):
        pass


class LongCLIPStableDiffusionMixinTests(FromPipeOffline, common.PipelineTesterMixin, unittest.TestCase):
    pipeline_class = LongCLIPStableDiffusionPipeline
    params = pipeline_params.TEXT_TO_IMAGE_PARAMS
    batch_params = pipeline_params.TEXT_TO_IMAGE_BATCH_PARAMS
    image_params = pipeline_params.TEXT_TO_IMAGE_IMAGE_PARAMS
    image_latents_params = pipeline_params.TEXT_TO_IMAGE_IMAGE_PARAMS
    callback_cfg_params = pipeline_params.TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS

    def get_dummy_components(self, time_cond_proj_dim=None):
        return tiny_sd_components(long_clip=True)

    def get_dummy_inputs(self, device, seed=0):
        return dummy_inputs(device, seed)

    def test_encode_prompt_works_in_isolation(self):
        # As diffusers' own StableDiffusionPipeline tests: SD's encode_prompt has required `device` and
        # `do_classifier_free_guidance` arguments that __call__ does not default.
        extra_required_param_value_dict = {
            "device": torch.device(common.torch_device).type,
            "do_classifier_free_guidance": self.get_dummy_inputs(common.torch_device)["guidance_scale"] > 1.0,
        }
        return super().test_encode_prompt_works_in_isolation(extra_required_param_value_dict)


class LongCLIPStableDiffusionXLMixinTests(FromPipeOffline, common.PipelineTesterMixin, unittest.TestCase):
    pipeline_class = LongCLIPStableDiffusionXLPipeline
    params = pipeline_params.TEXT_TO_IMAGE_PARAMS
    batch_params = pipeline_params.TEXT_TO_IMAGE_BATCH_PARAMS
    image_params = pipeline_params.TEXT_TO_IMAGE_IMAGE_PARAMS
    image_latents_params = pipeline_params.TEXT_TO_IMAGE_IMAGE_PARAMS
    callback_cfg_params = pipeline_params.TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS.union({"add_text_embeds", "add_time_ids"})

    def get_dummy_components(self, time_cond_proj_dim=None):
        components = tiny_sdxl_components(long_clip=True)
        stretch_text_encoder(components["text_encoder_2"])  # bigG at 248 positions, mode "stretch"
        components["tokenizer_2"].model_max_length = 248
        return components

    def get_dummy_inputs(self, device, seed=0):
        return dummy_inputs(device, seed)

    def test_save_load_optional_components(self):
        # diffusers' own SDXL tests skip this one: with every optional component None, both text encoders are gone and
        # no prompt can be read. Run it with the optional components a prompt can do without.
        with mock.patch.object(self.pipeline_class, "_optional_components", ["image_encoder", "feature_extractor"]):
            super().test_save_load_optional_components()
