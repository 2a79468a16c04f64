"""KServe v2 (Triton) inference protocol: the tensor contract, shared by HTTP and gRPC.

One input and two outputs per model::

    TEXT    BYTES  [n]      UTF-8 texts (n >= 1)
    SCORES  FP32   [n, C]   per-category scores in [0, 1]
    FLAGS   BOOL   [n, C]   per-category flags after thresholds

The C column names (OpenAI wire names, in column order) are in the model
config's ``parameters.categories`` (a JSON array string; gRPC ``ModelConfig``,
HTTP ``/v2/models/{name}/config``) and, over HTTP, also in the model
metadata's ``parameters.categories``. Everything here is transport-free:
functions take and return plain values and raise ``InvalidRequest``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving import __version__
from serving.errors import InvalidRequest, clip, clip_all
from serving.protocol.limits import check_texts

INPUT = "TEXT"
SCORES = "SCORES"
FLAGS = "FLAGS"
OUTPUTS = (SCORES, FLAGS)
SERVER_NAME = "modserve"
SERVER_VERSION = __version__
PLATFORM = "modserve_moderation"


def model_metadata(model: str, version: str, categories: Sequence[str]) -> dict[str, Any]:
    """``GET /v2/models/{name}`` body (gRPC ``ModelMetadataResponse`` has the same fields)."""
    c = len(categories)
    return {
        "name": model,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": SCORES, "datatype": "FP32", "shape": [-1, c]},
            {"name": FLAGS, "datatype": "BOOL", "shape": [-1, c]},
        ],
    }


def categories_json(categories: Sequence[str]) -> str:
    return json.dumps(list(categories))


def check_text_input(
    name: str, datatype: str, shape: Sequence[int], inputs_seen: Sequence[str]
) -> int:
    """Validate the TEXT tensor's header; return n (the batch size)."""
    extra = sorted(set(inputs_seen) - {INPUT})
    if extra:
        raise InvalidRequest(
            f"Unknown input tensor(s) {clip_all(extra)}; the only input is {INPUT!r}.",
            param="inputs",
        )
    if name != INPUT:
        raise InvalidRequest(f"Missing input tensor {INPUT!r} (BYTES, shape [n]).", param="inputs")
    if datatype != "BYTES":
        raise InvalidRequest(
            f"Input {INPUT!r} must have datatype BYTES, not {clip(datatype)}.", param=INPUT
        )
    if len(shape) != 1 or shape[0] < 0:
        raise InvalidRequest(
            f"Input {INPUT!r} must have shape [n] (one text per row), not {clip(list(shape))}.",
            param=INPUT,
        )
    return int(shape[0])


def check_outputs(requested: Sequence[str]) -> list[str]:
    """The outputs to send back, in request order; none requested = all."""
    unknown = sorted(set(requested) - set(OUTPUTS))
    if unknown:
        raise InvalidRequest(
            f"Unknown output tensor(s) {clip_all(unknown)}; outputs are {list(OUTPUTS)}.",
            param="outputs",
        )
    return list(requested) or list(OUTPUTS)


def split_bytes_tensor(raw: bytes) -> list[bytes]:
    """Triton's BYTES wire form: each element is a 4-byte little-endian length + its bytes."""
    items: list[bytes] = []
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 4 > end:
            raise InvalidRequest(
                f"Malformed BYTES tensor {INPUT!r}: truncated length prefix.", param=INPUT
            )
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > end:
            raise InvalidRequest(
                f"Malformed BYTES tensor {INPUT!r}: element {len(items)} claims {size} bytes "
                f"but only {end - pos} remain.",
                param=INPUT,
            )
        items.append(bytes(raw[pos : pos + size]))
        pos += size
    return items


def join_bytes_tensor(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_texts(
    items: Sequence[bytes | str], n: int, max_inputs: int, max_chars: int
) -> list[str]:
    """Elements of TEXT -> validated texts (same limits as ``/v1/moderations``)."""
    if len(items) != n:
        raise InvalidRequest(
            f"Input {INPUT!r} has shape [{n}] but carries {len(items)} element(s).", param=INPUT
        )
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            continue
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"{INPUT}[{i}] is not valid UTF-8.", param=f"{INPUT}[{i}]"
            ) from None
    if not texts:
        raise InvalidRequest(f"Input {INPUT!r} is empty; send at least one text.", param=INPUT)
    return check_texts(texts, max_inputs, max_chars)


def output_arrays(scores: np.ndarray, flags: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """Output name -> (datatype, array) with the exact wire dtypes."""
    return {
        SCORES: ("FP32", np.ascontiguousarray(scores, dtype="<f4")),
        FLAGS: ("BOOL", np.ascontiguousarray(flags, dtype=np.bool_)),
    }
