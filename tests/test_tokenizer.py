"""Tokenizer: ids identical to OpenAI CLIP's tokenizer, checked against the official outputs and an independent BPE."""

from __future__ import annotations

import gzip
import html
import random
from functools import lru_cache
from importlib import resources

import ftfy
import regex
import torch

from longclip_diffusion.tokenizer import END_OF_TEXT, START_OF_TEXT, load_tokenizer, tokenize


class IndependentBPE:
    """A straightforward re-implementation of OpenAI's simple_tokenizer, written from its published algorithm."""

    pattern = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def __init__(self) -> None:
        raw = resources.files("longclip_diffusion").joinpath("data/bpe_simple_vocab_16e6.txt.gz").read_bytes()
        merges = [tuple(line.split()) for line in gzip.decompress(raw).decode().split("\n")[1 : 49152 - 256 - 2 + 1]]
        byte_chars, n = {}, 0
        for b in range(256):
            if ord("!") <= b <= ord("~") or ord("¡") <= b <= ord("¬") or ord("®") <= b <= ord("ÿ"):
                byte_chars[b] = chr(b)
        for b in range(256):
            if b not in byte_chars:
                byte_chars[b] = chr(256 + n)
                n += 1
        self.byte_chars = byte_chars
        # OpenAI orders the base symbols as bytes_to_unicode().values(): printable ranges first, then the rest.
        printable = [b for b in range(256) if byte_chars[b] == chr(b)]
        rest = [b for b in range(256) if byte_chars[b] != chr(b)]
        base = [byte_chars[b] for b in printable + rest]
        vocab = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}

    @lru_cache(maxsize=None)
    def bpe(self, token: str) -> tuple[str, ...]:
        if token in ("<|startoftext|>", "<|endoftext|>"):  # OpenAI's BPE cache maps these to the special ids
            return (token,)
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(word[i], word[i + 1]) for i in range(len(word) - 1)]
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(word)

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = " ".join(text.split()).strip().lower()
        ids = []
        for token in self.pattern.findall(text):
            token = "".join(self.byte_chars[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token))
        return ids


def varied_strings(count: int) -> list[str]:
    """Hand-picked hard cases plus random mixes of words, unicode, entities, punctuation and odd whitespace."""
    hard = [
        "",
        " ",
        "a cat",
        "A photo of a RED bus!!",
        "don't you're we've I'm they'll he'd it's",
        "&amp; &lt;b&gt; &amp;amp; &#39;quoted&#39; &quot;x&quot;",
        "café naïve façade Ünïcödé",
        "東京タワー 北京 서울",
        "emoji 🐱🚌👍🏽 and ❤️",
        "tabs\tand\nnewlines\r\n  and  spaces",
        "(masterpiece:1.2), [blurry], \\(escaped\\)",
        "numbers 1234567890 3.14159 1e-5",
        "ﬁne ligatures and ＦＵＬＬＷＩＤＴＨ",
        "Ελληνικά Кириллица العربية עברית हिन्दी",
        "mojibake: cafÃ© â€œquotesâ€\x9d",
        "<|startoftext|> inside <|endoftext|> text",
        "!!!???...,,,;;;:::",
        "zero\u200bwidth\u00a0nbsp",
    ]
    pieces = [
        "landscape", "Portrait", "of", "a", "woman", "with", "flowing", "auburn", "hair", ",", ".", "!", "?", "—",
        "&amp;", "&gt;", "&#x27;", "é", "ñ", "ß", "ø", "日本", "中文", "🙂", "🌸", "\t", "\n", "  ", "'s", "'ll",
        "HDR", "8k", "f/1.8", "50mm", "(detailed:1.3)", "[blur]", "x" * 30, "antidisestablishmentarianism", "™", "©",
    ]
    rng = random.Random(1234)
    generated = ["".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(1, 40))) for _ in range(count)]
    return hard + generated


def test_ids_match_official_tokenizer_on_fixture_texts(reference):
    ids = tokenize(reference["texts"], context_length=248, truncate=True, pad_token_id=0)
    assert torch.equal(ids, reference["input_ids"])


def test_ids_match_independent_bpe_on_varied_strings():
    independent = IndependentBPE()
    tokenizer = load_tokenizer()
    strings = varied_strings(300)
    assert len(strings) > 300
    ids = tokenize(strings, context_length=512, truncate=True)
    for text, row in zip(strings, ids):
        expected = [START_OF_TEXT, *independent.encode(text)[:510], END_OF_TEXT]
        assert row[: len(expected)].tolist() == expected, text
    assert tokenizer.model_max_length == 248


def test_truncation_keeps_end_of_text_last():
    ids = tokenize("word " * 400)
    assert ids.shape == (1, 248)
    assert ids[0, 0] == START_OF_TEXT and ids[0, -1] == END_OF_TEXT
    assert (ids[0, 1:-1] != END_OF_TEXT).all()


def test_too_long_without_truncate_raises():
    try:
        tokenize("word " * 400, truncate=False)
    except ValueError as error:
        assert "context length 248" in str(error)
    else:
        raise AssertionError("expected a ValueError")


def test_exclamation_mark_is_a_bpe_token_not_padding():
    assert tokenize("a cat!")[0, :5].tolist() == [START_OF_TEXT, 320, 2368, 256, END_OF_TEXT]
