"""Token counter: how many tokens a prompt has and where a 77-token CLIP would cut it.

Counting is :func:`longclip_diffusion.prompts.count_tokens`; this module only renders the result
as HTML for the page (user text is always escaped).
"""

from __future__ import annotations

import html

from longclip_diffusion.defaults import CLIP_TOKEN_LIMIT as CLIP_LIMIT
from longclip_diffusion.defaults import LONG_CLIP_TOKEN_LIMIT as LONG_CLIP_LIMIT

# Long-CLIP reads 248 tokens, about 1,000 characters of English; a prompt is cut here before any work is done
# (counting, encoding), with a note, so one huge request cannot hold the page (an 8 MB prompt held it for 46 s).
MAX_PROMPT_CHARS = 10_000


def cap_prompt(prompt: str | None, what: str = "prompt") -> tuple[str, str]:
    """The prompt cut to :data:`MAX_PROMPT_CHARS`, and a note for the visitor when it was cut (else ``""``)."""
    prompt = prompt or ""
    if len(prompt) <= MAX_PROMPT_CHARS:
        return prompt, ""
    note = (
        f"The {what} is {len(prompt):,} characters; only the first {MAX_PROMPT_CHARS:,} are read "
        f"(Long-CLIP reads {LONG_CLIP_LIMIT} tokens, about 1,000 characters)."
    )
    return prompt[:MAX_PROMPT_CHARS], note


def _join(kept: str, dropped: str, tag: str, css_class: str, title: str) -> str:
    kept_html = html.escape(kept)
    if not dropped:
        return kept_html
    separator = " " if kept and not kept[-1].isspace() and not dropped[0].isspace() else ""
    return (
        f"{kept_html}{separator}<{tag} class='{css_class}' title='{html.escape(title)}'>"
        f"{html.escape(dropped)}</{tag}>"
    )


def token_counter_html(
    prompt: str,
    tokenizer=None,
    clip_limit: int = CLIP_LIMIT,
    long_clip_limit: int = LONG_CLIP_LIMIT,
    t5_limit: int | None = None,
) -> str:
    """Return the counter's HTML: the count, and the prompt with the words CLIP drops struck through.

    Words past ``clip_limit`` are wrapped in ``<del class='clip-dropped'>``; words past
    ``long_clip_limit`` (dropped by Long-CLIP too) in ``<mark class='longclip-dropped'>``.
    ``t5_limit`` (SD3, Flux): the model also reads the prompt with T5, up to that many T5 tokens on both sides.
    """
    from longclip_diffusion.prompt_syntax import count_tokens

    prompt, cut_note = cap_prompt(prompt)
    note = f"<div class='token-note'>{html.escape(cut_note)}</div>" if cut_note else ""
    if t5_limit is not None:
        note += (
            f"<div class='t5-note'>These limits are CLIP's: T5 also reads the prompt, up to {t5_limit} T5 tokens, "
            "the same for Long-CLIP and stock CLIP.</div>"
        )
    if not prompt.strip():
        return (
            "<div class='token-counter' data-tokens='0'><span class='token-count'>0 tokens</span> — "
            f"CLIP reads {clip_limit}, Long-CLIP reads {long_clip_limit}.{note}</div>"
        )
    short = count_tokens(prompt, limit=clip_limit, tokenizer=tokenizer)
    long = count_tokens(prompt, limit=long_clip_limit, tokenizer=tokenizer)
    n = short.num_tokens

    if long.dropped_text:
        summary = (
            f"over both limits: CLIP cuts at {clip_limit} (struck through), "
            f"Long-CLIP cuts at {long_clip_limit} (highlighted)"
        )
        # Text between the two cuts: dropped by CLIP, kept by Long-CLIP.
        middle = short.dropped_text
        if long.dropped_text and middle.endswith(long.dropped_text):
            middle = middle[: len(middle) - len(long.dropped_text)]
        inner = _join(middle.rstrip(), long.dropped_text.strip(), "mark", "longclip-dropped",
                      f"dropped by Long-CLIP ({long_clip_limit} tokens)")
        body = (
            f"{html.escape(short.kept_text)}{' ' if short.kept_text else ''}"
            f"<del class='clip-dropped' title='dropped by CLIP ({clip_limit} tokens)'>{inner}</del>"
        )
        status = "over"
    elif short.dropped_text:
        summary = (
            f"stock CLIP ({clip_limit}) drops the struck-through words; "
            f"Long-CLIP ({long_clip_limit}) reads all of them"
        )
        body = _join(short.kept_text, short.dropped_text, "del", "clip-dropped",
                     f"dropped by CLIP ({clip_limit} tokens)")
        status = "cut"
    else:
        summary = f"fits in CLIP's {clip_limit}"
        body = html.escape(short.kept_text)
        status = "fits"
    plural = "" if n == 1 else "s"
    return (
        f"<div class='token-counter {status}' data-tokens='{n}'>"
        f"<div class='token-summary'><span class='token-count'>{n} token{plural}</span> — {summary}.</div>"
        f"<div class='token-text'>{body}</div>{note}</div>"
    )
