"""Composite examples: texts made of several rows, so that harm inside long, mixed text is
learned (and measured) rather than averaged away.

A real post is rarely one sentence: a threat after three sentences about the weather is
still a threat. The corpus is mostly single short rows, so without composites a model learns
"harm fills the text" and a harmful span among benign sentences scores low (dilution).

Label rule for a text made of ``parts`` (one rule for training and for the dilution
evaluation), per category:

* positive if any part is a known positive;
* negative only if every part is a known negative;
* otherwise unknown (masked out of the loss and the metrics).

Training also has low-weight *assumed* negatives (``training.data.ASSUMED_NEGATIVES``): a
part's negative confidence is 1 for a known negative, its assumed-negative weight for an
assumed one, else 0; a composite's is the minimum over its parts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from training.data import Example

# Sources whose rows are benign, ordinary text (assumed-benign or human-judged unharmful,
# per the data README): the context a harmful span is placed into.
CONTEXT_SOURCES: tuple[str, ...] = (
    "wikipedia_npov_sentences",
    "liar_politifact_statements",
    "medquad_health_qa",
    "medical_safety_queries",
    "toxicchat_nontoxic_prompts",
    "wildguardtest_benign_prompts",
    "civil_comments_sample",
    "counsel_chat_therapy_qa",
    "pubmedqa_abstracts",
)
SEPARATORS: tuple[str, ...] = (" ", " ", "\n", "\n\n")  # how posts join sentences/paragraphs
MAX_CONTEXT_PARTS = 8  # benign rows around a target, as in the dilution evaluation


def combine(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mask) of a text made of parts with these (C,) (labels, mask) pairs.

    A mask entry is 1 for a known label, 0 for unknown, and may be fractional (an assumed
    negative's loss weight): a composite's negative gets the smallest weight of its parts,
    its positive (any part positive) weight 1."""
    y = np.stack([p[0] for p in parts]).astype(np.float32)  # (P, C), 0 where unknown
    m = np.stack([p[1] for p in parts]).astype(np.float32)
    positive = (y > 0).any(axis=0)
    mask = np.where(positive, 1.0, m.min(axis=0)).astype(np.float32)
    return np.asarray(positive, dtype=np.float32), mask


def token_counts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    """Tokens of each text without special tokens (how much of a window it takes)."""
    if not texts:
        return []
    return [len(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def is_context(ex: Example) -> bool:
    """A benign context row: a context source, no known positive, some known negative."""
    known = ex.mask > 0
    return bool(ex.source in CONTEXT_SOURCES and known.any() and not (ex.labels[known] > 0).any())


def pick_context(
    context: np.ndarray,
    context_tokens: np.ndarray,
    n_wanted: int,
    room_tokens: int,
    rng: np.random.Generator,
) -> list[int]:
    """Up to ``n_wanted`` rows of ``context`` (indices, with their token counts) that fit in
    ``room_tokens`` together: the target row is never truncated away."""
    if n_wanted <= 0 or room_tokens <= 0 or len(context) == 0:
        return []
    picks = rng.choice(len(context), size=min(n_wanted, len(context)), replace=False)
    kept, used = [], 0
    for p in picks:
        if used + int(context_tokens[p]) <= room_tokens:
            kept.append(int(context[p]))
            used += int(context_tokens[p])
    return kept


def join(target: str, context: Sequence[str], at: int, separator: str) -> str:
    """``target`` placed at position ``at`` among the ``context`` texts."""
    parts = [*context[:at], target, *context[at:]]
    return separator.join(parts)
