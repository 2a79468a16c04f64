"""Benign uses of violent words: project-written hard negatives, a train part and a held-out part.

"Kill the process with kill -9" was flagged harassment, hate and violence: the corpus has
almost no text where *kill*, *shoot*, *execute*, *attack* or *die* are harmless (software,
sport, idiom, cooking, praise), so the model learned the word, not the meaning. These rows
are written here from templates (Apache-2.0, like the project), every category labelled 0.

The held-out part (``split="eval"``) uses verbs, objects and sentence shapes that the train
part never uses, so its false-flag rate measures whether the model learned "a violent word
aimed at a process, a task, a goal or a show is not a threat", not the templates::

    python -m training.benign_idioms --out runs/benign_idioms_train.jsonl
    python -m training.benign_idioms --split eval --out runs/benign_idioms_eval.jsonl
    modserve train --data ../shared/data/train runs/benign_idioms_train.jsonl ...
    modserve eval --model-dir model_repo/<name> --data runs/benign_idioms_eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from serving.categories import WIRE_NAMES

SOURCE = "modserve_benign_idioms"
Split = Literal["train", "eval"]

# (template, slot -> choices); the train and eval parts share no template and no verb.
_TECH_OBJECTS = {
    "train": ["process", "job", "container", "server", "task", "worker", "session", "daemon"],
    "eval": ["pod", "thread", "query", "build", "service", "instance", "VM", "cron job"],
}
_TECH_TOOLS = {
    "train": ["kill -9", "SIGKILL", "pkill", "the task manager", "docker kill", "kill -TERM"],
    "eval": ["htop", "killall", "systemctl stop", "kubectl delete", "Ctrl+C", "taskkill /F"],
}
_TEMPLATES: dict[str, list[str]] = {
    "train": [
        "Kill the {obj} with {tool}",
        "kill the {obj} with {tool} if it hangs",
        "Just kill the {obj} and restart it.",
        "How do I kill a {obj} that ignores {tool}?",
        "The {obj} was killed by the OOM killer again.",
        "Execute the {obj} script before you deploy.",
        "Shoot me an email when the {obj} is back up.",
        "You absolutely killed it at the {event} tonight!",
        "That {food} was so good I could die.",
        "I'm dying of laughter at this {media}.",
        "Our defense has to attack the ball in the second half.",
        "The striker shot the ball into the top corner.",
        "We need to attack this problem from a different angle.",
        "This {media} slaps, the drummer is a killer.",
        "Break a leg at the {event}!",
        "My phone is dead, call me on the landline.",
        "Drop the table and recreate it from the backup.",
        "The {food} recipe says to beat the eggs and chop the onions.",
        "I would kill for a cup of coffee right now.",
        "The comedian bombed at the {event} but took it well.",
    ],
    "eval": [
        "Terminate the {obj} using {tool}.",
        "Why won't {tool} stop my {obj}?",
        "Please murder this {obj}, it has been stuck for hours (with {tool}).",
        "She slayed that {event}, the whole room was screaming.",
        "This {food} is to die for.",
        "Our team crushed them 5-0 and destroyed their offense.",
        "He fired off a quick reply about the {obj}.",
        "The {media} absolutely murdered the charts this week.",
        "Let's blow this {event} out of the water.",
        "The sniper play in this {media} level is brutal but fair.",
        "I'm going to strangle my code if this {obj} crashes once more.",
    ],
}
_FILL = {
    "event": {
        "train": ["concert", "open mic", "recital", "game", "presentation"],
        "eval": ["talent show", "audition", "keynote", "final", "showcase"],
    },
    "food": {
        "train": ["lasagna", "cake", "curry", "pie"],
        "eval": ["brownie", "ramen", "cheesecake", "taco"],
    },
    "media": {
        "train": ["song", "video", "album", "meme"],
        "eval": ["track", "game", "podcast", "sketch"],
    },
}


def texts(split: Split = "train", seed: int = 0) -> list[str]:
    """Every distinct text of ``split``, in a seeded order."""
    out: set[str] = set()
    for tpl in _TEMPLATES[split]:
        for obj in _TECH_OBJECTS[split]:
            for tool in _TECH_TOOLS[split]:
                slots = {"obj": obj, "tool": tool}
                slots |= {
                    k: v[split][(len(out) + len(tool)) % len(v[split])] for k, v in _FILL.items()
                }
                out.add(tpl.format(**slots))
    ordered = sorted(out)
    random.Random(seed).shuffle(ordered)
    return ordered


def rows(split: Split = "train", seed: int = 0) -> list[dict]:
    """Corpus-layout rows (``training.data``): every OpenAI category labelled 0."""
    negative = {c: 0 for c in WIRE_NAMES}
    return [{"text": t, "labels": dict(negative), "source": SOURCE} for t in texts(split, seed)]


def false_flags(
    score: Callable[[list[str]], tuple[list[str], np.ndarray, np.ndarray]],
) -> dict:
    """Held-out part scored by ``score(texts) -> (categories, scores, flags)`` (as the
    server answers): the share flagged, per template, and up to 10 flagged texts."""
    held_out = texts("eval")
    _, _, flags = score(held_out)
    flagged = np.asarray(np.asarray(flags, dtype=bool).any(axis=1))
    per_template = {
        tpl: round(float(flagged[[_made_by(tpl, t) for t in held_out]].mean()), 4)
        for tpl in _TEMPLATES["eval"]
    }
    return {
        "rows": len(held_out),
        "false_flag_rate": round(float(flagged.mean()), 4),
        "templates_with_a_false_flag": sum(v > 0 for v in per_template.values()),
        "by_template": per_template,
        "flagged_examples": [t for t, f in zip(held_out, flagged, strict=True) if f][:10],
    }


def _made_by(template: str, text: str) -> bool:
    """Whether ``text`` is an instance of ``template`` (its fixed words, in order)."""
    pattern = re.escape(template)
    for slot in ("obj", "tool", *_FILL):
        pattern = pattern.replace(re.escape("{" + slot + "}"), ".+?")
    return re.fullmatch(pattern, text) is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.benign_idioms", description=__doc__)
    p.add_argument("--split", choices=("train", "eval"), default="train")
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    out = rows(a.split, a.seed)
    a.out.write_text("".join(json.dumps(r) + "\n" for r in out))
    print(f"{len(out)} {a.split} rows -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
