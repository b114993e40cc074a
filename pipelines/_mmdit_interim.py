"""Interim home of the encoding pieces the SD3 and Flux pipelines share, until they move into
``longclip_diffusion.prompts`` (owned by the pipeline-core work). Not public API.
"""

from __future__ import annotations

import logging

import torch
from diffusers.utils.torch_utils import get_module_execution_device
from torch import nn

from ..prompts import apply_weights, check_weights, parse_weighted_prompt
from ..tokenizer import END_OF_TEXT

logger = logging.getLogger(__name__)


def end_of_text_states(input_ids: torch.LongTensor, last_hidden_state: torch.Tensor) -> torch.Tensor:
    """Each row's hidden state at its first end-of-text token: CLIP's pooled output before any projection."""
    end_of_text = (input_ids == END_OF_TEXT).int().argmax(dim=-1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return last_hidden_state[rows, end_of_text.to(last_hidden_state.device)]


def _token_weights(fragments: list[tuple[str, float]], offsets: torch.Tensor) -> torch.Tensor:
    """The weight of each token: that of the fragment its first character comes from (1 for special tokens)."""
    ends, weights, position = [], [], 0
    for text, weight in fragments:
        position += len(text)
        ends.append(position)
        weights.append(weight)
    starts, stops = offsets[:, 0].contiguous(), offsets[:, 1].contiguous()
    fragment = torch.bucketize(starts, torch.tensor(ends), right=True).clamp(max=len(weights) - 1)
    token_weights = torch.tensor(weights)[fragment]
    return torch.where(stops > starts, token_weights, torch.ones_like(token_weights))


def encode_t5_prompts(
    text_encoder: nn.Module,
    tokenizer,
    prompts: list[str],
    *,
    max_sequence_length: int = 512,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """T5 hidden states ``[batch, max_sequence_length, width]`` as diffusers' SD3 and Flux pipelines compute them, with
    weighting syntax parsed out.

    T5 reads each prompt with the weighting syntax removed, tokenized as a whole (``</s>`` then ``<pad>`` up to
    ``max_sequence_length``, cut there), so a prompt without weights gives exactly diffusers' states. Weights act as
    ComfyUI core's T5 (its ``ClipTokenWeightEncoder``, shared with CLIP): ``z_empty + w · (z − z_empty)`` per token,
    where ``z_empty`` is the empty prompt (``</s>``, padding) of the same length encoded in the same batch; a token
    takes the weight of the fragment its first character comes from.
    """
    device = device or get_module_execution_device(text_encoder)
    for prompt in prompts:
        check_weights(prompt)
    fragments = [parse_weighted_prompt(prompt) for prompt in prompts]
    texts = ["".join(text for text, _ in prompt_fragments) for prompt_fragments in fragments]
    weighted = any(weight != 1 for prompt_fragments in fragments for _, weight in prompt_fragments)
    inputs = tokenizer(
        texts + [""] if weighted else texts,
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        return_offsets_mapping=weighted,
        return_tensors="pt",
    )
    for text, ids in zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"]):
        if len(ids) > max_sequence_length - 1:
            logger.warning(
                "T5 reads %d tokens (`max_sequence_length`); these words are dropped: %r",
                max_sequence_length,
                tokenizer.decode(ids[max_sequence_length - 1 :]),
            )
    hidden_states = text_encoder(inputs.input_ids.to(device))[0]
    if weighted:
        weights = torch.stack(
            [_token_weights(item, offsets) for item, offsets in zip(fragments, inputs["offset_mapping"])]
        )
        hidden_states = apply_weights(hidden_states[:-1], weights, hidden_states[-1:])
    return hidden_states
