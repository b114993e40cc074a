"""The prompt box's live token counter."""

from __future__ import annotations

import re

from longclip_diffusion.demo.examples import EXAMPLES
from longclip_diffusion.demo.tokens import token_counter_html
from longclip_diffusion.prompts import count_tokens


def _count(html_text: str) -> int:
    return int(re.search(r"data-tokens='(\d+)'", html_text).group(1))


def _text(fragment: str) -> str:
    return re.sub(r"<[^>]+>", "", fragment)


def test_short_prompt_fits_and_marks_nothing():
    out = token_counter_html("a photo of a cat")
    assert _count(out) == count_tokens("a photo of a cat").num_tokens == 5
    assert "fits in CLIP's 77" in out
    assert "<del" not in out and "<mark" not in out


def test_long_prompt_strikes_through_exactly_what_clip_drops():
    prompt = " ".join(f"word{i}" for i in range(60))  # "wordN" is two or three tokens each
    expected = count_tokens(prompt, limit=77)
    assert expected.dropped_text, "the test prompt must be longer than 77 tokens"
    out = token_counter_html(prompt)
    assert _count(out) == expected.num_tokens > 77
    struck = re.search(r"<del class='clip-dropped'[^>]*>(.*?)</del>", out, re.S).group(1)
    assert _text(struck).strip() == expected.dropped_text.strip()
    assert _text(out.split("<del")[0]).rstrip().endswith(expected.kept_text)
    assert "<mark" not in out  # Long-CLIP reads all of it


def test_example_prompts_are_long():
    for label, prompt, _ in EXAMPLES:
        tokens = count_tokens(prompt, limit=77)
        assert 77 < tokens.num_tokens <= 248, (label, tokens.num_tokens)
        assert "<del class='clip-dropped'" in token_counter_html(prompt)


def test_over_248_tokens_marks_both_cuts():
    prompt = "red apple, " * 130  # 3 tokens a repeat: 390 tokens
    out = token_counter_html(prompt)
    assert _count(out) == count_tokens(prompt).num_tokens > 248
    marked = re.search(r"<mark class='longclip-dropped'[^>]*>(.*?)</mark>", out, re.S).group(1)
    assert marked.strip() == count_tokens(prompt, limit=248).dropped_text.strip()
    assert out.index("<del") < out.index("<mark")  # the Long-CLIP cut sits inside CLIP's dropped part


def test_user_text_is_escaped():
    out = token_counter_html("<img src=x onerror=alert(1)> & friends")
    assert "<img" not in out
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; friends" in out


def test_empty_prompt():
    out = token_counter_html("   ")
    assert _count(out) == 0
