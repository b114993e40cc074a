"""Bad input to prompt encoding (``longclip_diffusion.prompts``): weights, empty and odd prompts, batches.

One table: each case names the surface (tokenize / encode / windows), the input, and either the expected error (type
and a phrase of its message) or a check of the sensible result.
"""

from __future__ import annotations

import logging

import pytest
import torch

from longclip_diffusion.prompts import MAX_WEIGHT, encode_prompts, encode_windows, tokenize_prompt
from longclip_diffusion.testing import clip_text_config, random_text_encoder
from longclip_diffusion.tokenizer import START_OF_TEXT, load_tokenizer

TOKENIZER = load_tokenizer()
ENCODER = random_text_encoder(clip_text_config(), long=True)
SHORT_ENCODER = random_text_encoder(clip_text_config(), with_projection=True)  # 77 positions: windows


def tokenize(prompt):
    return tokenize_prompt(TOKENIZER, prompt, 248)


@torch.no_grad()
def encode(prompts):
    return encode_prompts(ENCODER, TOKENIZER, prompts)


@torch.no_grad()
def windows(prompts):
    return encode_windows(SHORT_ENCODER, TOKENIZER, prompts)


def weights_of(expected):
    """A sensible result: the prompt's first token has weight ``expected``."""
    return lambda item: abs(float(item.weights[1]) - expected) < 1e-4


def finite(encoding):
    return bool(torch.isfinite(encoding.hidden_states).all())


SURFACES = {"tokenize": tokenize, "encode": encode, "windows": windows}

HUGE = "1" + "0" * 41  # 1e41 written out: the syntax takes plain decimals, as A1111's

CASES = [
    # surface, input, expected error type and message phrase, or a check of the result
    ("tokenize", f"(cat:{HUGE})", (ValueError, "outside the accepted range")),
    ("tokenize", "(cat:1e41)", weights_of(1.1)),  # not a number to the syntax: text in plain round brackets
    ("tokenize", "(cat:11)", (ValueError, "'cat' is outside")),
    ("tokenize", "(cat:-11)", (ValueError, "-11")),
    ("tokenize", "a (dog:9.5) and ((cat:9.5))", (ValueError, "'cat'")),  # 9.5 · 1.21 nested
    ("tokenize", "(((((((((((((((((((((((((cat)))))))))))))))))))))))))", (ValueError, "outside")),  # 1.1^25
    ("tokenize", f"(cat:{MAX_WEIGHT:g})", weights_of(MAX_WEIGHT)),
    ("tokenize", f"(cat:-{MAX_WEIGHT:g})", weights_of(-MAX_WEIGHT)),
    ("tokenize", "(cat:0)", weights_of(0.0)),
    ("tokenize", "(((cat", weights_of(1.1**3)),  # unclosed: weights the rest
    ("tokenize", "cat)", weights_of(1.0)),  # stray closing bracket: literal
    ("tokenize", "", lambda item: item.num_tokens == 0 and item.input_ids[0] == START_OF_TEXT),
    ("tokenize", " \t\n ", lambda item: item.num_tokens == 0),
    ("tokenize", "\\(cat:3\\)", weights_of(1.0)),  # escaped brackets are text
    ("encode", [], (ValueError, "empty")),
    ("encode", "a cat", (TypeError, "list of strings")),  # a bare string would be read letter by letter
    ("encode", ["a cat", None], (TypeError, "list of strings")),
    ("encode", [f"(cat:{HUGE})"], (ValueError, "outside the accepted range")),
    ("encode", [""], finite),
    ("encode", ["(cat:10) " * 5], finite),
    ("encode", ["word " * 400], lambda encoding: encoding.hidden_states.shape == (1, 248, 32)),
    ("windows", [], (ValueError, "empty")),
    ("windows", [f"(cat:{HUGE})"], (ValueError, "outside")),
    ("windows", ["", "word " * 400], lambda encoding: encoding.hidden_states.shape == (2, 248, 32)),
]


@pytest.mark.parametrize("surface, value, expected", CASES, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(CASES)])
def test_prompt_bad_input(surface, value, expected):
    call = SURFACES[surface]
    if isinstance(expected, tuple):
        error_type, phrase = expected
        with pytest.raises(error_type, match=None) as error:
            call(value)
        assert phrase in str(error.value), str(error.value)
    else:
        assert expected(call(value))


def test_dropped_words_warning_is_ours_alone_and_in_the_users_words(caplog, capfd):
    prompt = "A Quiet Harbour at dawn, " * 45 + "And a BRIGHT-red Bicycle (leaning:1.2) by the lamppost."
    fresh = load_tokenizer()  # transformers warns once per tokenizer: a used one would prove nothing
    assert fresh("word " * 300, verbose=False) and "indexing errors" not in capfd.readouterr().err
    with caplog.at_level(logging.WARNING):
        item = tokenize_prompt(fresh, prompt, 248)
    assert item.dropped_text and prompt.endswith(item.dropped_text)  # cut from the user's own string
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and item.dropped_text in messages[0] and "BRIGHT-red" in messages[0]
    assert "indexing errors" not in capfd.readouterr().err  # transformers' warning is not triggered
