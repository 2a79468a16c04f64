"""The input limits every transport applies, one rule for OpenAI HTTP, KServe and gRPC."""

from __future__ import annotations

from collections.abc import Sequence

from serving.errors import InvalidRequest


def check_texts(texts: Sequence[str], max_inputs: int, max_chars: int) -> list[str]:
    """``texts`` if there are 1 to ``max_inputs`` of them, each of at most ``max_chars``
    characters (``MODSERVE_MAX_INPUTS_PER_REQUEST``, ``MODSERVE_MAX_INPUT_CHARS``);
    otherwise ``InvalidRequest`` naming the setting and the offending ``param``."""
    if not texts:
        raise InvalidRequest("'input' must not be an empty array.", param="input")
    if len(texts) > max_inputs:
        raise InvalidRequest(
            f"'input' has {len(texts)} items; at most {max_inputs} are allowed per request "
            "(MODSERVE_MAX_INPUTS_PER_REQUEST).",
            param="input",
        )
    for i, t in enumerate(texts):
        if len(t) > max_chars:
            raise InvalidRequest(
                f"input[{i}] is {len(t)} characters; the limit is {max_chars} "
                "(MODSERVE_MAX_INPUT_CHARS).",
                param=f"input[{i}]",
                code="string_above_max_length",
            )
    return list(texts)
