"""The real CLIP BPE tokenizer, offline, with Long-CLIP's 248-token context.

The vocabulary is OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (MIT licence), shipped as package data. It is
turned into a standard ``transformers.CLIPTokenizer``, so ``save_pretrained`` writes a ``tokenizer/`` folder every
diffusers pipeline reads. OpenAI's text cleaning (ftfy, HTML unescaping twice, whitespace) is applied by
:func:`clean_text` first, which makes the ids identical to the reference ``longclip.tokenize``.
"""

from __future__ import annotations

import gzip
import html
import re
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import ftfy

if TYPE_CHECKING:  # torch and transformers are imported where used: counting tokens needs neither
    import tokenizers
    import torch
    from transformers import CLIPTokenizer

CONTEXT_LENGTH = 248
START_OF_TEXT = 49406
END_OF_TEXT = 49407
VOCAB_SIZE = 49408

_NUM_MERGES = 49152 - 256 - 2


def clean_text(text: str) -> str:
    """OpenAI CLIP's cleaning: fix mojibake, unescape HTML twice, collapse whitespace, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def _bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=1)
def bpe_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (token → id) and merge list, read from the shipped BPE file."""
    data = resources.files("longclip_diffusion").joinpath("data/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def load_tokenizer(model_max_length: int = CONTEXT_LENGTH) -> CLIPTokenizer:
    """A new ``CLIPTokenizer`` with CLIP's real vocabulary, built offline from the shipped BPE file."""
    from transformers import CLIPTokenizer

    vocab, merges = bpe_vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


@lru_cache(maxsize=1)
def default_tokenizer() -> CLIPTokenizer:
    """One shared 248-token tokenizer for read-only use (counting, ``tokenize``); do not add tokens to it."""
    return load_tokenizer()


@lru_cache(maxsize=1)
def _counting_backend() -> tokenizers.Tokenizer:
    """The BPE of :func:`default_tokenizer` on the ``tokenizers`` library alone (no transformers import: the
    ``longclip tokens`` start-up). Configured as transformers' ``CLIPTokenizer`` configures its backend."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab, merges = bpe_vocabulary()
    # Adapted from transformers.models.clip.tokenization_clip.CLIPTokenizer.__init__
    backend = Tokenizer(
        BPE(
            vocab=dict(vocab),
            merges=list(merges),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token="<|endoftext|>",
        )
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    return backend


def token_ids(texts: list[str], tokenizer: CLIPTokenizer | None = None) -> list[list[int]]:
    """BPE ids of each cleaned text, without start/end tokens (``tokenizer``'s, else CLIP's plain vocabulary)."""
    cleaned = [clean_text(text) for text in texts]
    if tokenizer is None:
        return [encoding.ids for encoding in _counting_backend().encode_batch(cleaned, add_special_tokens=False)]
    return tokenizer(cleaned, add_special_tokens=False, verbose=False)["input_ids"]  # the length check is ours


def tokenize(
    texts: str | list[str],
    context_length: int = CONTEXT_LENGTH,
    truncate: bool = True,
    pad_token_id: int = 0,
) -> torch.LongTensor:
    """Reference ``longclip.tokenize``: ``[start, ids…, end]`` padded to ``context_length``.

    With ``truncate`` a long text is cut and its last id replaced by end-of-text; without it, a text that does not fit
    raises an error naming it.
    """
    import torch

    texts = [texts] if isinstance(texts, str) else list(texts)
    result = torch.full((len(texts), context_length), pad_token_id, dtype=torch.long)
    for row, (text, ids) in enumerate(zip(texts, token_ids(texts))):
        ids = [START_OF_TEXT, *ids, END_OF_TEXT]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"Text {text[:60]!r}… has {len(ids)} tokens, more than the context length {context_length}; "
                    "pass truncate=True to cut it."
                )
            ids = ids[:context_length]
            ids[-1] = END_OF_TEXT
        result[row, : len(ids)] = torch.tensor(ids)
    return result
