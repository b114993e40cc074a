"""Prompt parsing, weighting maths, padding and the over-length policy."""

from __future__ import annotations

import logging

import pytest
import torch

from longclip_diffusion.prompts import (
    count_tokens,
    encode_prompts,
    parse_weighted_prompt,
    split_into_windows,
    tokenize_prompt,
    window_layout,
)
from longclip_diffusion.testing import clip_text_config, random_text_encoder
from longclip_diffusion.tokenizer import END_OF_TEXT, START_OF_TEXT, load_tokenizer, tokenize


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def encoder():
    return random_text_encoder(clip_text_config(), with_projection=True, long=True)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (red:1.3) car", [("a ", 1.0), ("red", 1.3), (" car", 1.0)]),
        ("(big) ((bigger))", [("big", 1.1), (" ", 1.0), ("bigger", 1.1 * 1.1)]),
        ("[small] [[smaller]]", [("small", 1 / 1.1), (" ", 1.0), ("smaller", 1 / 1.1 / 1.1)]),
        ("\\(literal\\) \\[x\\]", [("(literal) [x]", 1.0)]),
        ("(a (b:2) c:0.5)", [("a ", 0.5), ("b", 1.0), (" c", 0.5)]),
        ("unclosed (emphasis", [("unclosed ", 1.0), ("emphasis", 1.1)]),
        ("stray ) and ] brackets", [("stray ) and ] brackets", 1.0)]),
        ("time: 12:30", [("time: 12:30", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_weighted_prompt(prompt, expected):
    parsed = parse_weighted_prompt(prompt)
    assert [text for text, _ in parsed] == [text for text, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


def test_tokenize_prompt_pads_to_fixed_length_with_weights(tokenizer):
    item = tokenize_prompt(tokenizer, "a (red:1.5) bus", max_length=248, pad_token_id=0)
    plain = tokenize("a red bus")[0]
    assert torch.equal(item.input_ids, plain)
    assert item.num_tokens == 3 and item.dropped_text == ""
    assert item.weights[:6].tolist() == pytest.approx([1.0, 1.0, 1.5, 1.0, 1.0, 1.0])
    eos_padded = tokenize_prompt(tokenizer, "a red bus", max_length=248, pad_token_id=END_OF_TEXT)
    assert (eos_padded.input_ids[4:] == END_OF_TEXT).all()


def test_over_length_prompt_warns_naming_dropped_words(tokenizer, caplog):
    prompt = "word " * 250 + "zebra giraffe"
    with caplog.at_level(logging.WARNING):
        item = tokenize_prompt(tokenizer, prompt, max_length=248)
    assert item.num_tokens == 252
    assert item.input_ids[0] == START_OF_TEXT and item.input_ids[-1] == END_OF_TEXT
    assert "zebra giraffe" in item.dropped_text
    assert "zebra giraffe" in caplog.text and "252 tokens" in caplog.text


def test_unweighted_prompt_encodes_exactly_as_the_encoder(encoder, tokenizer):
    encoding = encode_prompts(encoder, tokenizer, ["a red bus", ""], pad_token_id=0)
    with torch.no_grad():
        direct = encoder(tokenize(["a red bus", ""]))
    torch.testing.assert_close(encoding.hidden_states, direct.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(encoding.pooled, direct.text_embeds, rtol=0, atol=1e-6)


def test_weighting_follows_documented_maths(encoder, tokenizer):
    encoding = encode_prompts(encoder, tokenizer, ["a (red:1.5) bus"], pad_token_id=0)
    with torch.no_grad():
        z, z_empty = encoder(tokenize(["a red bus", ""])).last_hidden_state.double()
    weights = torch.ones(248, dtype=torch.float64)
    weights[2] = 1.5
    expected = z_empty + weights[:, None] * (z - z_empty)
    torch.testing.assert_close(encoding.hidden_states[0].double(), expected, rtol=0, atol=1e-5)
    changed = (encoding.hidden_states[0].double() - z).abs().amax(dim=-1) > 1e-4
    assert changed.nonzero().flatten().tolist() == [2]  # only the weighted token moves


def test_clip_skip_and_penultimate_layer(encoder, tokenizer):
    with torch.no_grad():
        output = encoder(tokenize("a cat"), output_hidden_states=True)
    skip = encode_prompts(encoder, tokenizer, ["a cat"], clip_skip=1).hidden_states
    expected = encoder.text_model.final_layer_norm(output.hidden_states[-2])
    torch.testing.assert_close(skip, expected, rtol=0, atol=0)
    penultimate = encode_prompts(encoder, tokenizer, ["a cat"], hidden_state="penultimate").hidden_states
    torch.testing.assert_close(penultimate, output.hidden_states[-2], rtol=0, atol=0)


def test_count_tokens_marks_where_77_token_clip_cuts(tokenizer):
    words = [f"w{i}" for i in range(60)]  # "w12" is 2 tokens: w + 12 ... count exactly with the tokenizer
    prompt = " ".join(words)
    count = count_tokens(prompt, limit=77, tokenizer=tokenizer)
    per_word = [len(tokenizer(w, add_special_tokens=False).input_ids) for w in words]
    assert count.num_tokens == sum(per_word) > 75
    fitting = next(i for i in range(len(words)) if sum(per_word[: i + 1]) > 75)
    assert count.cut_char == prompt.index(" " + words[fitting]) + 1
    assert count.kept_text == " ".join(words[:fitting]) and count.dropped_text == " ".join(words[fitting:])
    assert count_tokens("a (short:1.2) prompt", tokenizer=tokenizer).fits
    assert count_tokens("a (short:1.2) prompt", tokenizer=tokenizer).num_tokens == 3


def test_window_layout_reads_each_token_from_its_own_window_and_the_tail_from_the_last():
    # 5 tokens, windows of 5 positions (3 tokens each): [s t1 t2 t3 e], [s t4 t5 e p]; 12 one-pass positions.
    window, slot = window_layout(num_tokens=5, length=12, window_length=5)
    #                 s  t1 t2 t3 t4 t5 e  p  p  p  p  p
    assert window.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert slot.tolist() == [0, 1, 2, 3, 1, 2, 3, 4, 4, 4, 4, 4]


def test_split_into_windows_pads_the_last_window():
    assert split_into_windows([1, 2, 3, 4, 5], 5, "s", "e", 0) == [["s", 1, 2, 3, "e"], ["s", 4, 5, "e", 0]]
    assert split_into_windows([], 4, "s", "e", 0) == [["s", "e", 0, 0]]


def test_window_layout_of_an_empty_prompt_is_one_window():
    window, slot = window_layout(num_tokens=0, length=6, window_length=4)
    assert window.tolist() == [0] * 6
    assert slot.tolist() == [0, 1, 2, 3, 3, 3]
