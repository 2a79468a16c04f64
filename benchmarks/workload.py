"""Seeded synthetic moderation traffic: a realistic mix of lengths, made here from templates.

Knobs (``WorkloadMix``) are request shares; every text is generated from the small word
lists below with ``random.Random(seed)``, so a seed fixes the exact request sequence and
every server in a run sees byte-identical requests in the same order.

Kinds of request:

* ``chat``   one short chat message (3-16 words, ~5-25 tokens),
* ``comment`` one comment (25-90 words, ~35-130 tokens),
* ``long``   one long post (300-700 words, ~400-950 tokens: beyond the 256-token window, so
  modserve chunks it; peers truncate it),
* ``batch``  one request carrying 4-32 inputs drawn from the chat/comment mix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

WORDS = (  # noqa: SIM905 - a word list reads better as text
    "the a an this that my your our their his her it we you they i people everyone nobody "
    "game match team player coach movie show episode song album post thread comment reply "
    "update patch server bug feature price shipping order refund account password photo "
    "video stream city park school class teacher friend family dog cat weather weekend "
    "really very quite totally never always maybe honestly literally actually again still "
    "love hate like want need think know feel see said told asked posted shared deleted "
    "great terrible awful amazing boring funny stupid smart weird nice rude kind angry sad "
    "happy tired late early today tomorrow yesterday tonight soon now here there about "
    "with without for from into over under after before because but and or so if when "
    "hurt kill fight attack threat die blood weapon gun knife punch burn destroy crush"
).split()
OPENERS = ("lol", "ok", "wow", "hey", "ugh", "omg", "well", "so", "honestly", "yeah")
PUNCT = (".", "!", "?", "...", "!!", ".")


@dataclass(frozen=True)
class WorkloadMix:
    """Request shares per kind (normalized); inputs per ``batch`` request in [lo, hi]."""

    chat: float = 0.55
    comment: float = 0.25
    long: float = 0.08
    batch: float = 0.12
    batch_inputs: tuple[int, int] = (4, 32)


@dataclass(frozen=True)
class Request:
    """One request: its inputs and a kind label (for per-kind reporting)."""

    kind: str
    inputs: list[str] = field(default_factory=list)

    @property
    def body(self) -> dict[str, object]:
        """The /v1/moderations JSON body: a string for one input, a list for several."""
        return {"input": self.inputs[0] if len(self.inputs) == 1 else self.inputs}


def _sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    if rng.random() < 0.3:
        words.insert(0, rng.choice(OPENERS))
    return " ".join(words).capitalize() + rng.choice(PUNCT)


def _text(rng: random.Random, lo_words: int, hi_words: int) -> str:
    target = rng.randint(lo_words, hi_words)
    parts, n = [], 0
    while n < target:
        k = min(target - n, rng.randint(4, 18))
        parts.append(_sentence(rng, k))
        n += k
    return " ".join(parts)


def _single(rng: random.Random, kind: str) -> str:
    if kind == "chat":
        return _text(rng, 3, 16)
    if kind == "comment":
        return _text(rng, 25, 90)
    return _text(rng, 300, 700)


def make_requests(n_requests: int, seed: int = 0, mix: WorkloadMix | None = None) -> list[Request]:
    """``n_requests`` requests in a fixed order for ``seed``."""
    mix = mix or WorkloadMix()
    rng = random.Random(seed)
    kinds = ("chat", "comment", "long", "batch")
    weights = (mix.chat, mix.comment, mix.long, mix.batch)
    out = []
    for kind in rng.choices(kinds, weights, k=n_requests):
        if kind == "batch":
            n = rng.randint(*mix.batch_inputs)
            inner = rng.choices(("chat", "comment"), (mix.chat, mix.comment), k=n)
            out.append(Request(kind, [_single(rng, k) for k in inner]))
        else:
            out.append(Request(kind, [_single(rng, kind)]))
    return out


SINGLE_MIX = WorkloadMix(chat=0.6, comment=0.4, long=0.0, batch=0.0)


def single_texts(n: int, seed: int = 0, min_chars: int = 50, max_chars: int = 600) -> list[str]:
    """``n`` distinct single texts of ``min_chars``-``max_chars`` characters (chat and
    comment kinds, cut at ``max_chars``): issue #17's end-to-end workload."""
    out: list[str] = []
    seen: set[str] = set()
    for attempt in range(1000):
        for r in make_requests(n * 2, seed=seed * 1000 + attempt, mix=SINGLE_MIX):
            t = r.inputs[0][:max_chars]
            if len(t) >= min_chars and t not in seen:
                seen.add(t)
                out.append(t)
                if len(out) == n:
                    return out
    raise ValueError(f"could not make {n} distinct texts of {min_chars}-{max_chars} characters")


def describe(requests: list[Request], token_counts: list[int] | None = None) -> dict[str, object]:
    """Shares per kind, inputs per request and (if given) tokens per request."""
    n = len(requests)
    kinds: dict[str, int] = {}
    for r in requests:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    out: dict[str, object] = {
        "requests": n,
        "share_by_kind": {k: round(v / n, 3) for k, v in sorted(kinds.items())},
        "inputs_per_request_mean": round(sum(len(r.inputs) for r in requests) / n, 2),
    }
    if token_counts:
        out["tokens_per_request_mean"] = round(sum(token_counts) / n, 1)
    return out


def token_counts(requests: list[Request], tokenizer_json: str) -> list[int]:
    """Tokens per request as the model sees them untruncated: content tokens + [CLS]/[SEP]."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    out = []
    for r in requests:
        enc = tok.encode_batch(r.inputs, add_special_tokens=False)
        out.append(sum(len(e.ids) + 2 for e in enc))
    return out
