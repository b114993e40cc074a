"""Prompts to embeddings: A1111 weighting, fixed-length padding, the over-length policy, and the encoder pass.

Weighting maths (as ComfyUI's core, so a weight scales a token's *difference* from the empty prompt, which keeps
embeddings in range whatever the layer's mean)::

    z_w[i] = z_empty[i] + w[i] · (z[i] − z_empty[i])

where ``z_empty`` is the empty prompt encoded with the same padding, in the same forward pass. ``(word:0)`` makes a
token look like the empty prompt at its position; ``(word:2)`` doubles its departure from it.
A prompt whose weights are all 1 is encoded exactly as without weighting. Accepted weights lie in
``[-MAX_WEIGHT, MAX_WEIGHT]`` (±10): a prompt with a weight outside (``(word:1e41)``, or nesting that multiplies past
it) is refused with a ``ValueError`` naming the words, since such weights overflow the embeddings to NaN/Inf.

A shorter encoder (bigG's 77 positions) reads a long prompt in windows (:func:`encode_windows`); weights then act per
window, around the empty window at the same slot, as ComfyUI core's ``encode_token_weights`` does for each chunk.

T5 (SD3, Flux) reads the prompt with the weighting syntax removed and is weighted the same way, around the empty
prompt (``</s>`` then padding), as ComfyUI core weights T5 (:func:`encode_t5_prompts`).

Every prompt is padded to the encoder's full length (248 for Long-CLIP), so a prompt's embedding never depends on the
other prompts of its batch. Prompts longer than that are cut, and a warning names the dropped words as the user typed
them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import nn
from transformers import CLIPTokenizer, PreTrainedTokenizerBase

from .positions import position_embedding
from .prompt_syntax import (  # the text-only half (no torch), re-exported here
    ROUND_BRACKET_WEIGHT,
    SQUARE_BRACKET_WEIGHT,
    TokenCount,
    count_tokens,
    parse_weighted_prompt,
    weighted_token_ids,
)
from .tokenizer import CONTEXT_LENGTH, END_OF_TEXT, START_OF_TEXT

logger = logging.getLogger(__name__)

MAX_WEIGHT = 10.0


def check_weights(prompt: str) -> None:
    """Refuse weights outside ``[-MAX_WEIGHT, MAX_WEIGHT]``: they overflow the embeddings to NaN/Inf."""
    for text, weight in parse_weighted_prompt(prompt):
        if not -MAX_WEIGHT <= weight <= MAX_WEIGHT:  # also catches NaN
            raise ValueError(
                f"Prompt weight {weight:g} on {text.strip()!r} is outside the accepted range {-MAX_WEIGHT:g} to "
                f"{MAX_WEIGHT:g}; use a smaller weight such as ({text.strip()}:1.5)."
            )


@dataclass
class TokenizedPrompt:
    """One prompt as the encoder reads it: ids and per-token weights, both ``[max_length]``."""

    input_ids: torch.LongTensor
    weights: torch.Tensor
    num_tokens: int
    dropped_text: str


def check_prompts(prompts: list[str]) -> None:
    """A batch of prompts: a non-empty list of strings (a bare string would be read letter by letter)."""
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(prompt, str) for prompt in prompts):
        raise TypeError(f"`prompts` must be a list of strings; got {type(prompts).__name__} {prompts!r:.60}.")
    if not prompts:
        raise ValueError("`prompts` is empty; pass at least one prompt.")


def tokenize_prompt(
    tokenizer: CLIPTokenizer,
    prompt: str,
    max_length: int = 248,
    pad_token_id: int = 0,
    weighting: bool = True,
) -> TokenizedPrompt:
    """Tokenize with weights: ``[start, tokens…, end, pad…]`` of exactly ``max_length`` ids.

    ``num_tokens`` counts the prompt's tokens without start/end. Tokens past ``max_length − 2`` are dropped and
    returned as ``dropped_text`` in the prompt's own words (and logged as a warning). With ``weighting``, weights
    outside ``[-MAX_WEIGHT, MAX_WEIGHT]`` raise a ``ValueError`` (:func:`check_weights`).
    """
    if weighting:
        check_weights(prompt)
    ids, weights = weighted_token_ids(tokenizer, prompt, weighting)
    budget = max_length - 2
    dropped_text = ""
    if len(ids) > budget:
        dropped_text = count_tokens(prompt, max_length, tokenizer).dropped_text or tokenizer.decode(ids[budget:])
        logger.warning(
            "The prompt has %d tokens; the encoder reads %d, so these words are dropped: %r",
            len(ids),
            budget,
            dropped_text,
        )
    num_tokens = len(ids)
    ids, weights = ids[:budget], weights[:budget]
    padding = max_length - len(ids) - 2
    input_ids = torch.tensor([START_OF_TEXT, *ids, END_OF_TEXT] + [pad_token_id] * padding, dtype=torch.long)
    token_weights = torch.tensor([1.0, *weights, 1.0] + [1.0] * padding)
    return TokenizedPrompt(input_ids, token_weights, num_tokens, dropped_text)


@dataclass
class PromptEncoding:
    """Hidden states ``[batch, length, width]`` and, for an encoder with a projection, pooled ``[batch, proj]``."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None


HiddenState = Literal["final_norm", "penultimate"]
Token = TypeVar("Token")


def _final_layer_norm(text_encoder: nn.Module) -> nn.LayerNorm:
    text_model = getattr(text_encoder, "text_model", text_encoder)
    return text_model.final_layer_norm


def num_positions(text_encoder: nn.Module) -> int:
    """How many tokens an encoder reads (248 for Long-CLIP, 77 for CLIP)."""
    return position_embedding(text_encoder).num_embeddings


def encode_prompts(
    text_encoder: nn.Module,
    tokenizer: CLIPTokenizer,
    prompts: list[str],
    *,
    pad_token_id: int = 0,
    clip_skip: int | None = None,
    hidden_state: HiddenState = "final_norm",
    weighting: bool = True,
    device: torch.device | str | None = None,
) -> PromptEncoding:
    """Encode prompts in one pass of up to ``num_positions(text_encoder)`` tokens each.

    ``hidden_state``: ``"final_norm"`` is SD 1.x's convention (last layer after the final layer norm; with
    ``clip_skip`` = k the output k layers earlier, normed); ``"penultimate"`` is SDXL's (the layer before the last,
    no final norm; ``clip_skip`` = k goes k layers further back).
    """
    check_prompts(prompts)
    device = device or next(text_encoder.parameters()).device
    max_length = num_positions(text_encoder)
    tokenized = [tokenize_prompt(tokenizer, prompt, max_length, pad_token_id, weighting) for prompt in prompts]
    empty = tokenize_prompt(tokenizer, "", max_length, pad_token_id)
    return _weighted_pass(
        text_encoder,
        torch.stack([item.input_ids for item in tokenized]).to(device),
        torch.stack([item.weights for item in tokenized]).to(device),
        empty.input_ids.unsqueeze(0).to(device),
        clip_skip=clip_skip,
        hidden_state=hidden_state,
    )


def encode_windows(
    text_encoder: nn.Module,
    tokenizer: CLIPTokenizer,
    prompts: list[str],
    *,
    length: int = CONTEXT_LENGTH,
    pad_token_id: int = 0,
    clip_skip: int | None = None,
    hidden_state: HiddenState = "penultimate",
    device: torch.device | str | None = None,
) -> PromptEncoding:
    """Encode prompts of up to ``length`` positions with a shorter encoder (e.g. bigG's 77) in windows.

    The prompt's tokens (weights parsed as everywhere) are split into windows ``[start, 75 tokens, end, pad…]``; all
    windows of all prompts go through the encoder as one batch, and the ``length`` positions are filled from them as
    :func:`window_layout` says (each token from its own window; end and padding from the last window). An empty prompt
    is one window ``[start, end, pad…]``. Weights act per window, around the empty window at the same slot (encoded in
    the same batch), as ComfyUI core does for each 77-token chunk. Pooled: the first window's projected end-of-text
    feature (it covers only the first 75 tokens), as ComfyUI and compel do.
    """
    check_prompts(prompts)
    device = device or next(text_encoder.parameters()).device
    window_length = num_positions(text_encoder)
    windows, window_weights, first_windows, window_index, slot_index = [], [], [], [], []
    for prompt in prompts:
        item = tokenize_prompt(tokenizer, prompt, length, pad_token_id)
        count = min(item.num_tokens, length - 2)
        first_windows.append(len(windows))
        tokens = item.input_ids[1 : 1 + count].tolist()
        windows += split_into_windows(tokens, window_length, START_OF_TEXT, END_OF_TEXT, pad_token_id)
        window_weights += split_into_windows(item.weights[1 : 1 + count].tolist(), window_length, 1.0, 1.0, 1.0)
        window, slot = window_layout(count, length, window_length)
        window_index.append(window + first_windows[-1])
        slot_index.append(slot)

    empty = split_into_windows([], window_length, START_OF_TEXT, END_OF_TEXT, pad_token_id)
    encoding = _weighted_pass(
        text_encoder,
        torch.tensor(windows, dtype=torch.long, device=device),
        torch.tensor(window_weights, device=device),
        torch.tensor(empty, dtype=torch.long, device=device),
        clip_skip=clip_skip,
        hidden_state=hidden_state,
    )
    hidden_states = encoding.hidden_states[torch.stack(window_index).to(device), torch.stack(slot_index).to(device)]
    pooled = encoding.pooled[torch.tensor(first_windows, device=device)] if encoding.pooled is not None else None
    return PromptEncoding(hidden_states, pooled)


def _weighted_pass(
    text_encoder: nn.Module,
    input_ids: torch.LongTensor,
    weights: torch.Tensor,
    empty_ids: torch.LongTensor,
    *,
    clip_skip: int | None,
    hidden_state: HiddenState,
) -> PromptEncoding:
    """One encoder pass over rows of ids ``[N, L]`` with per-token ``weights`` ``[N, L]``.

    When a weight is not 1, the empty prompt's row ``empty_ids`` ``[1, L]`` rides along in the same batch as the
    weighting's anchor (:func:`apply_weights`); pooled vectors are never weighted. All weights 1: a plain pass.
    """
    weighted = bool((weights != 1).any())
    if weighted:
        input_ids = torch.cat([input_ids, empty_ids])
    need_layers = clip_skip is not None or hidden_state == "penultimate"
    output = text_encoder(input_ids, output_hidden_states=need_layers)
    hidden_states = select_hidden_states(text_encoder, output, clip_skip=clip_skip, hidden_state=hidden_state)
    pooled = project_end_of_text(text_encoder, input_ids, output.last_hidden_state)
    if weighted:
        hidden_states = apply_weights(hidden_states[:-1], weights, hidden_states[-1:])
        pooled = pooled[:-1] if pooled is not None else None
    return PromptEncoding(hidden_states, pooled)


def select_hidden_states(
    text_encoder: nn.Module, output, *, clip_skip: int | None = None, hidden_state: HiddenState = "final_norm"
) -> torch.Tensor:
    """The hidden states a diffusion model reads from a text encoder's output (see :func:`encode_prompts`).

    ``output`` must come from a call with ``output_hidden_states=True`` unless the plain last layer is wanted.
    """
    if hidden_state == "penultimate":
        return output.hidden_states[-((clip_skip or 0) + 2)]
    if clip_skip:
        return _final_layer_norm(text_encoder)(output.hidden_states[-(clip_skip + 1)])
    return output.last_hidden_state


def project_end_of_text(
    text_encoder: nn.Module, input_ids: torch.LongTensor, last_hidden_state: torch.Tensor
) -> torch.Tensor | None:
    """The projected feature at each row's first end-of-text token, or ``None`` for an encoder without projection."""
    projection = getattr(text_encoder, "text_projection", None)
    if projection is None:
        return None
    return projection(end_of_text_states(input_ids, last_hidden_state))


def end_of_text_states(input_ids: torch.LongTensor, last_hidden_state: torch.Tensor) -> torch.Tensor:
    """Each row's hidden state at its first end-of-text token: CLIP's pooled output before any projection (what Flux
    reads from CLIP-L, diffusers' ``pooler_output``)."""
    end_of_text = (input_ids == END_OF_TEXT).int().argmax(dim=-1).to(last_hidden_state.device)
    rows = torch.arange(input_ids.shape[0], device=last_hidden_state.device)
    return last_hidden_state[rows, end_of_text]


def split_into_windows(
    tokens: Sequence[Token], window_length: int, start: Token, end: Token, pad: Token
) -> list[list[Token]]:
    """``tokens`` as windows ``[start, up to window_length − 2 tokens, end, pad…]`` of ``window_length`` items each
    (no tokens: one window ``[start, end, pad…]``); :func:`window_layout` says where each one-pass position reads."""
    body = window_length - 2
    chunks = [list(tokens[i : i + body]) for i in range(0, len(tokens), body)] or [[]]
    return [[start, *chunk, end] + [pad] * (body - len(chunk)) for chunk in chunks]


def window_layout(num_tokens: int, length: int, window_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of ``length`` one-pass positions reads from when a prompt is encoded in shorter windows.

    The prompt's ``n = num_tokens`` tokens are split into chunks of ``w = window_length − 2`` (75 for CLIP's 77), each
    encoded as ``[start, chunk, end, pad…]``. Returns ``(window, slot)``, two ``[length]`` index tensors (window
    counted from the prompt's first):

    * position 0 (start) ← window 0, slot 0;
    * position ``i`` (token ``ti``, 1 ≤ i ≤ n) ← window ``(i − 1) // w``, slot ``(i − 1) % w + 1``;
    * position ``n + 1`` (end) ← the last window's end slot (``m + 1``, with ``m`` tokens in that window);
    * positions ``n + 2 …`` (padding) ← the last window's pad slots in order; past its final slot they repeat it.
    """
    body = window_length - 2
    last = max(num_tokens - 1, 0) // body
    tokens_in_last = num_tokens - last * body
    positions = torch.arange(length)
    token_window = ((positions - 1).clamp(min=0) // body).clamp(max=last)
    token_slot = (positions - 1) % body + 1
    tail_start = num_tokens + 1  # the end token; everything from here on reads the last window after its tokens
    tail_slot = (tokens_in_last + 1 + positions - tail_start).clamp(max=window_length - 1)
    in_tail = positions >= tail_start
    window = torch.where(in_tail, torch.full_like(positions, last), token_window)
    slot = torch.where(in_tail, tail_slot, token_slot)
    window[0], slot[0] = 0, 0
    return window, slot


def apply_weights(hidden_states: torch.Tensor, weights: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Token weighting around the empty prompt: ``empty + w · (z − empty)`` (see the module docstring).

    ``hidden_states`` ``[batch, length, width]``, ``weights`` ``[batch, length]``, ``empty`` ``[1, length, width]``.
    """
    weights = weights.to(device=hidden_states.device, dtype=hidden_states.dtype).unsqueeze(-1)
    return empty + weights * (hidden_states - empty)


# --------------------------------------------------------------------------------------------------------------------
# T5 (SD3's text_encoder_3, Flux's text_encoder_2)


def _t5_token_weights(fragments: list[tuple[str, float]], offsets: torch.Tensor) -> torch.Tensor:
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
    tokenizer: PreTrainedTokenizerBase,
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
    device = device or next(text_encoder.parameters()).device
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
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        if len(ids) > max_sequence_length - 1:
            logger.warning(
                "T5 reads %d tokens (`max_sequence_length`); these words are dropped: %r",
                max_sequence_length,
                tokenizer.decode(ids[max_sequence_length - 1 :]),
            )
    hidden_states = text_encoder(inputs.input_ids.to(device))[0]
    if weighted:
        weights = torch.stack(
            [_t5_token_weights(item, offsets) for item, offsets in zip(fragments, inputs["offset_mapping"])]
        )
        hidden_states = apply_weights(hidden_states[:-1], weights, hidden_states[-1:])
    return hidden_states
