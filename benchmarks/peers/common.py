"""What the peers share: the model (same weights as modserve), scoring and padding counters."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from serving.engine.postprocess import PostProcessor
from serving.model.load import LoadedModel, load_model
from serving.protocol.openai import build_response


class PeerModel:
    """``serving.model.load.load_model`` + the HF tokenizer; inputs longer than the model window
    are TRUNCATED to ``max_length_tokens`` (what a plain HF server does; modserve chunks)."""

    def __init__(self, model_dir: Path) -> None:
        self.loaded: LoadedModel = load_model(model_dir, "cpu", "float32")
        self.cfg = self.loaded.cfg
        self.post = PostProcessor(self.cfg)
        self.lock = threading.Lock()
        self.stats = {"real_tokens": 0, "padded_tokens": 0, "sequences": 0, "batches": 0}

    def scores(self, texts: list[str]) -> Any:
        """One forward over ``texts`` padded to the longest of them: (n, L) head scores."""
        enc = self.loaded.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.cfg.max_length_tokens,
            return_tensors="pt",
        )
        mask = enc["attention_mask"]
        with torch.inference_mode():
            out = self.loaded.model(enc["input_ids"], mask).float().numpy()
        with self.lock:
            self.stats["real_tokens"] += int(mask.sum())
            self.stats["padded_tokens"] += int(mask.numel())
            self.stats["sequences"] += len(texts)
            self.stats["batches"] += 1
        return out

    def response(self, texts: list[str], head_scores: Any) -> dict[str, Any]:
        """OpenAI /v1/moderations JSON from (n, L) head scores (one chunk per input)."""
        scores = self.post.scores(head_scores, [1] * len(texts), texts)
        return build_response(self.cfg.name, self.post.categories, scores, self.post.flags(scores))


def texts_of(body: dict[str, Any]) -> list[str]:
    inp = body["input"]
    return [inp] if isinstance(inp, str) else list(inp)
