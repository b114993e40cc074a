"""Prompt text, without torch: A1111 weighting syntax and token counting.

The half of :mod:`longclip_diffusion.prompts` that needs no model, so ``longclip tokens`` and the demo's counter start
without importing torch or transformers; :mod:`~longclip_diffusion.prompts` re-exports every name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .tokenizer import token_ids

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

ROUND_BRACKET_WEIGHT = 1.1
SQUARE_BRACKET_WEIGHT = 1 / 1.1

_WEIGHT_TOKENS = re.compile(
    r"""
    \\[\\()\[\]]          # escaped bracket or backslash
    | \(                  # open emphasis
    | \[                  # open de-emphasis
    | :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # explicit weight closing a round bracket
    | \)
    | \]
    | [^\\()\[\]:]+       # plain text
    | [\\:]               # a lone backslash or colon
    """,
    re.VERBOSE,
)


def parse_weighted_prompt(prompt: str) -> list[tuple[str, float]]:
    """Split an A1111-style prompt into ``(text, weight)`` fragments.

    ``(words)`` ×1.1, ``((words))`` ×1.21, ``[words]`` ÷1.1, ``(words:1.3)`` ×1.3; ``\\(`` ``\\)`` ``\\[`` ``\\]``
    are literal brackets. An unclosed bracket weights the rest of the prompt; a stray closing bracket is literal.
    """
    fragments: list[list] = []
    round_starts: list[int] = []
    square_starts: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _WEIGHT_TOKENS.finditer(prompt):
        token, explicit_weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            fragments.append([token[1], 1.0])
        elif token == "(":
            round_starts.append(len(fragments))
        elif token == "[":
            square_starts.append(len(fragments))
        elif explicit_weight is not None and round_starts:
            multiply(round_starts.pop(), float(explicit_weight))
        elif token == ")" and round_starts:
            multiply(round_starts.pop(), ROUND_BRACKET_WEIGHT)
        elif token == "]" and square_starts:
            multiply(square_starts.pop(), SQUARE_BRACKET_WEIGHT)
        else:
            fragments.append([token, 1.0])
    for start in round_starts:
        multiply(start, ROUND_BRACKET_WEIGHT)
    for start in square_starts:
        multiply(start, SQUARE_BRACKET_WEIGHT)

    merged: list[tuple[str, float]] = []
    for text, weight in fragments:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]


def weighted_token_ids(
    tokenizer: CLIPTokenizer | None, prompt: str, weighting: bool = True
) -> tuple[list[int], list[float]]:
    """The prompt's token ids (no start/end) and each token's weight (``tokenizer`` ``None``: CLIP's vocabulary)."""
    fragments = parse_weighted_prompt(prompt) if weighting else [(prompt, 1.0)]
    fragment_ids = token_ids([text for text, _ in fragments], tokenizer)
    ids = [token for ids_of_fragment in fragment_ids for token in ids_of_fragment]
    weights = [weight for ids_of_fragment, (_, weight) in zip(fragment_ids, fragments) for _ in ids_of_fragment]
    return ids, weights


@dataclass
class TokenCount:
    """A prompt's token count against an encoder limit, and where that encoder would cut it."""

    num_tokens: int
    limit: int
    kept_text: str
    dropped_text: str
    cut_char: int | None

    @property
    def fits(self) -> bool:
        return self.cut_char is None


_WEIGHT_SYNTAX = re.compile(r"(?<!\\)[()\[\]]|:\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*\)?$")


def count_tokens(prompt: str, limit: int = 77, tokenizer: CLIPTokenizer | None = None) -> TokenCount:
    """Count a prompt's tokens (weighting syntax excluded) and find where a ``limit``-token CLIP cuts it.

    ``limit`` includes the start and end tokens, as CLIP's 77 does. ``cut_char`` is the index in ``prompt`` of the
    first word that does not fit (``None`` when everything fits); ``kept_text``/``dropped_text`` split ``prompt`` there.
    """
    total = len(weighted_token_ids(tokenizer, prompt)[0])
    budget, used, cut_char = limit - 2, 0, None
    words = list(re.finditer(r"\S+", prompt))
    word_ids = token_ids([_WEIGHT_SYNTAX.sub("", word.group()) for word in words], tokenizer)
    for word, ids in zip(words, word_ids):
        used += len(ids)
        if used > budget:
            cut_char = word.start()
            break
    if cut_char is None:
        return TokenCount(total, limit, prompt, "", None)
    return TokenCount(total, limit, prompt[:cut_char].rstrip(), prompt[cut_char:], cut_char)
