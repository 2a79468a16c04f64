"""The KServe v2 tensor contract (serving/protocol/kserve.py), without a server."""

from __future__ import annotations

import pytest

from serving.errors import InvalidRequest
from serving.protocol import kserve


def test_bytes_tensor_round_trip():
    items = [b"", "héllo".encode(), b"x" * 300]
    assert kserve.split_bytes_tensor(kserve.join_bytes_tensor(items)) == items


@pytest.mark.parametrize("raw", [b"\x01\x00", b"\x05\x00\x00\x00abc"])
def test_truncated_bytes_tensor_is_invalid(raw: bytes):
    with pytest.raises(InvalidRequest):
        kserve.split_bytes_tensor(raw)


def test_text_input_header_checks():
    assert kserve.check_text_input("TEXT", "BYTES", [3], ["TEXT"]) == 3
    bad = [
        ("TEXT", "FP32", [1], ["TEXT"]),
        ("TEXT", "BYTES", [1, 1], ["TEXT"]),
        ("X", "BYTES", [1], ["X"]),
        ("TEXT", "BYTES", [1], ["TEXT", "X"]),
        ("", "", [], []),
    ]
    for args in bad:
        with pytest.raises(InvalidRequest):
            kserve.check_text_input(*args)


def test_decode_texts_limits():
    assert kserve.decode_texts([b"a", "b"], 2, 8, 10) == ["a", "b"]
    for items, n in (([b"\xff"], 1), ([b"a"], 2), ([], 0), ([b"a" * 11], 1), ([b"a"] * 9, 9)):
        with pytest.raises(InvalidRequest):
            kserve.decode_texts(items, n, 8, 10)


def test_outputs_default_to_all_and_reject_unknown():
    assert kserve.check_outputs([]) == ["SCORES", "FLAGS"]
    assert kserve.check_outputs(["FLAGS"]) == ["FLAGS"]
    with pytest.raises(InvalidRequest):
        kserve.check_outputs(["LOGITS"])
