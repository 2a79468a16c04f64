"""The default model's label set and derived-category rules.

Derived categories have no trained head because the corpus has no positives for them
(by policy for ``sexual/minors``). Each is ``parent score x (1 if the lexicon gate
matches else ungated_factor)``. Tune a rule by editing its regex/factor in the shipped
``config.yaml`` (no retraining needed): widen ``gate_regex`` for recall, lower
``ungated_factor`` to suppress the child when no lexicon evidence is present.
"""

from __future__ import annotations

from serving.config import DEFAULT_MODEL_NAME
from serving.model.repo_config import DerivedRule, ModelConfig

DEFAULT_LABELS: list[str] = [
    "hate",
    "hate/threatening",
    "harassment",
    "harassment/threatening",
    "self-harm",
    "self-harm/intent",
    "sexual",
    "violence",
    "illicit",
    "illicit/violent",
]

MINOR_GATE = (
    r"\b(child|children|childs?|kids?|kiddies|minors?|under-?age(d)?|teens?|teenagers?|"
    r"pre-?teens?|tweens?|schoolgirls?|schoolboys?|school ?girls?|school ?boys?|"
    r"(little|young|small) (girls?|boys?|ones?)|toddlers?|infants?|bab(y|ies)|lolis?|"
    r"lolita|jailbait|p(a)?edo\w*|p(a)?edophil\w*|loli\w*|shota\w*|"
    r"middle ?school|high ?school|elementary|kindergarten|daughter|son|niece|nephew|"
    r"(1[0-7]|[1-9]) ?(yo|y/?o|yrs?|years?)( old)?)\b"
)
GRAPHIC_GATE = (
    r"\b(blood\w*|gore|gory|guts|entrails|intestines?|innards|organs|disembowel\w*|"
    r"decapitat\w*|behead\w*|dismember\w*|mutilat\w*|sever(ed|ing)|flay\w*|skinn?ed|"
    r"brains?|skull|splatter\w*|gush\w*|maggots?|corpses?|rotting|decompos\w*|gouge\w*|"
    r"eyeballs?|tortur\w*|burn(ed|t|ing) alive|charred|mangled|crush(ed|ing)|bones?|"
    r"stab(bed|bing|s)?|slit|slash(ed|ing)|impal\w*|limbs?|flesh|wounds?|bleed\w*|"
    r"massacre\w*|carnage|mutilation|headless|rip(ped)? (open|apart|out))\b"
)
INSTRUCTION_GATE = (
    r"(\bhow (to|do i|can i|would i|should i|much|many)\b|\bways? to\b|"
    r"\b(best|easiest|quickest|fastest|painless|surest) (way|method)s?\b|\bpainless(ly)?\b|"
    r"\bmethods?\b|\bstep[- ]by[- ]step\b|\binstructions?\b|\bguide\b|\btutorial\b|"
    r"\btips?\b|\boverdos\w*|\bdosage\b|\bdoses?\b|\blethal\b|\bmg\b|\bhow deep\b|"
    r"\bwhere to cut\b|\bwhich (pills|drugs|medication)\b|\bnoose\b|\bhang (myself|yourself)\b)"
)

DEFAULT_DERIVED: dict[str, DerivedRule] = {
    "sexual/minors": DerivedRule(
        parent="sexual",
        gate_regex=MINOR_GATE,
        ungated_factor=0.05,
        note="sexual score, kept only when a minor-indicating word/age appears",
    ),
    "violence/graphic": DerivedRule(
        parent="violence",
        gate_regex=GRAPHIC_GATE,
        ungated_factor=0.1,
        note="violence score, kept only when a gore/graphic-injury word appears",
    ),
    "self-harm/instructions": DerivedRule(
        parent="self-harm",
        gate_regex=INSTRUCTION_GATE,
        ungated_factor=0.05,
        note="self-harm score, kept only when an instruction/method word appears",
    ),
}


def default_model_config(
    name: str = DEFAULT_MODEL_NAME,
    labels: list[str] | None = None,
    derived: dict[str, DerivedRule] | None = None,
) -> ModelConfig:
    labels = list(labels or DEFAULT_LABELS)
    rules = DEFAULT_DERIVED if derived is None else derived
    rules = {k: v for k, v in rules.items() if v.parent in labels and k not in labels}
    return ModelConfig(
        name=name,
        version="1",
        description="MiniLM-L6 multi-label moderation classifier (OpenAI moderation taxonomy)",
        labels=labels,
        derived=rules,
        max_length_tokens=256,
        chunk_stride_tokens=32,
        buckets_tokens=[16, 32, 64, 128, 256],
        pooling="mean",
        activation="sigmoid",
        dtype="float16",
        int8_ok=False,
    )
