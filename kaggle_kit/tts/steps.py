"""Step boundaries, shared by the online strategies (where vLLM stops at them) and
offline best-of-N (which splits finished answers afterwards with the same rule).

The rule mirrors vLLM's stop-string check with `min_tokens`: a step ends at the
first token that completes a stop string ending after the step's first
`min_step_tokens` tokens, or after `max_step_tokens` tokens, whichever comes first.
"""
from __future__ import annotations

from typing import Sequence


def split_points(pieces: Sequence[str], stops: Sequence[str], min_tokens: int, max_tokens: int) -> list[int]:
    """End indices (exclusive) of each step over per-token text pieces; the last is len(pieces)."""
    ends: list[int] = []
    start = 0
    text = ""
    offsets = [0]  # char offset after each token of the current step
    for t, piece in enumerate(pieces):
        prev_len = len(text)
        text += piece
        offsets.append(len(text))
        n = t - start + 1
        hit = False
        if n > min_tokens and stops:
            check_from = max(offsets[min(min_tokens, len(offsets) - 1)], prev_len)
            for s in stops:
                # a stop string ending in the new characters, past the first min_tokens tokens
                if text.find(s, max(0, check_from - len(s) + 1)) != -1:
                    hit = True
                    break
        if hit or n >= max_tokens:
            ends.append(t + 1)
            start, text, offsets = t + 1, "", [0]
    if not ends or ends[-1] != len(pieces):
        if len(pieces) > (ends[-1] if ends else 0):
            ends.append(len(pieces))
    return ends


def token_pieces(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """Text of each token on its own (good enough to find ASCII stop strings)."""
    return tokenizer.batch_decode([[t] for t in token_ids], skip_special_tokens=False)


def exact_step_texts(tokenizer, step_token_ids: Sequence[Sequence[int]]) -> list[str]:
    """Step texts that join to exactly decode(all ids).

    Each step gets the characters that become stable once its tokens are decoded
    with everything before them, so a character split across two steps' tokens
    (a multi-byte UTF-8 char, a merged stop string) is attributed once, to the
    step that completes it.
    """
    ids: list[int] = []
    prefixes = []
    for step in step_token_ids:
        ids.extend(step)
        prefixes.append(tokenizer.decode(ids, skip_special_tokens=True))
    final = prefixes[-1] if prefixes else ""
    bounds = [0]
    for p in prefixes[:-1]:
        if final.startswith(p):  # the usual case, at C speed
            n = len(p)
        else:  # p ends in a partial character that `final` completes
            n = 0
            limit = min(len(p), len(final))
            while n < limit and p[n] == final[n]:
                n += 1
        bounds.append(max(n, bounds[-1]))
    bounds.append(len(final))
    return [final[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
