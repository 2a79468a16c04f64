"""The load generator's HTTP client against a tiny scripted HTTP/1.1 server: it must read
every framing the measured servers use and never miscount an answer."""

from __future__ import annotations

import asyncio
import json

import pytest

from benchmarks.loadgen import HttpClient, HttpTarget, run_closed
from benchmarks.workload import Request

BODY = b'{"ok":true}'


async def _serve(answer: bytes, close_after: bool = False, delay_s: float = 0.0):
    """A server answering every request with ``answer``; returns (server, seen bodies)."""
    seen: list[dict] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                seen.append(json.loads(await reader.readexactly(length)))
                await asyncio.sleep(delay_s)
                writer.write(answer)
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


def _url(server: asyncio.Server) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _ok(extra: bytes = b"", body: bytes = BODY, status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
    return head + extra + b"\r\n" + body


def test_content_length_answers_reuse_one_connection_and_send_the_json_body() -> None:
    async def main() -> tuple[list[str], list[dict], int]:
        server, seen = await _serve(_ok())
        target = HttpTarget(_url(server))
        statuses = [await target.send(Request("chat", ["hi there"])) for _ in range(3)]
        opened = len(target.http._open)
        await target.aclose()
        server.close()
        return statuses, seen, opened

    statuses, seen, opened = asyncio.run(main())
    assert statuses == ["200", "200", "200"]
    assert seen == [{"input": "hi there"}] * 3
    assert opened == 1  # kept alive


def test_batch_and_infinity_bodies() -> None:
    async def main() -> list[dict]:
        server, seen = await _serve(_ok())
        for target in (HttpTarget(_url(server)), HttpTarget(_url(server), infinity_model="m")):
            assert await target.send(Request("batch", ["a", "b"])) == "200"
            await target.aclose()
        server.close()
        return seen

    assert asyncio.run(main()) == [{"input": ["a", "b"]}, {"input": ["a", "b"], "model": "m"}]


def test_chunked_answers_and_error_statuses_are_read_whole() -> None:
    chunked = (
        b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
    )

    async def main() -> list[str]:
        server, _ = await _serve(chunked)
        target = HttpTarget(_url(server))
        out = [await target.send(Request("chat", ["x"])) for _ in range(2)]
        await target.aclose()
        server.close()
        return out

    assert asyncio.run(main()) == ["429", "429"]


@pytest.mark.parametrize("says_close", [True, False], ids=["connection-close", "silently"])
def test_a_connection_the_server_closes_is_replaced_without_a_lost_request(
    says_close: bool,
) -> None:
    """Closed after each answer, with ``Connection: close`` or silently (an idle keep-alive
    connection the server dropped): the next request goes out once, on a new connection."""

    async def main() -> tuple[list[str], int]:
        extra = b"Connection: close\r\n" if says_close else b""
        server, seen = await _serve(_ok(extra), close_after=True)
        target = HttpTarget(_url(server))
        out = [await target.send(Request("chat", ["x"])) for _ in range(3)]
        await target.aclose()
        server.close()
        return out, len(seen)

    assert asyncio.run(main()) == (["200", "200", "200"], 3)


def test_a_slow_answer_is_a_timeout_and_closed_loop_counts_it() -> None:
    async def main() -> dict:
        server, _ = await _serve(_ok(), delay_s=0.5)
        target = HttpTarget(_url(server), timeout_s=0.1)
        res = await run_closed(target, [Request("chat", ["x"])], [3], concurrency=2, duration_s=0.3)
        await target.aclose()
        server.close()
        return res.summary()

    summary = asyncio.run(main())
    assert summary["requests_ok"] == 0
    assert summary["errors_by_status"]["timeout"] == summary["requests_sent"] >= 2


def test_no_server_is_an_error_status_not_an_exception() -> None:
    async def main() -> str:
        server, _ = await _serve(_ok())
        url = _url(server)
        server.close()
        await server.wait_closed()
        target = HttpTarget(url)
        out = await target.send(Request("chat", ["x"]))
        await target.aclose()
        return out

    assert asyncio.run(main()) == "ConnectionRefusedError"


def test_post_reports_no_answer_as_status_zero_and_keeps_headers() -> None:
    async def main() -> tuple[tuple[int, dict[str, str]], tuple[int, dict[str, str]]]:
        server, _ = await _serve(_ok(b"Retry-After: 2\r\n", status=b"429 Too Many Requests"))
        url = _url(server)
        client = HttpClient(url, timeout_s=1.0)
        answered = await client.post("/v1/moderations", {"input": "x"})
        await client.aclose()
        server.close()
        await server.wait_closed()
        return answered, await HttpClient(url, timeout_s=1.0).post("/x", {})

    (status, headers), refused = asyncio.run(main())
    assert status == 429 and headers["retry-after"] == "2"
    assert refused == (0, {})


def test_single_texts_are_distinct_in_range_and_seeded() -> None:
    from benchmarks.workload import single_texts

    texts = single_texts(500, seed=4)
    assert texts == single_texts(500, seed=4) and texts != single_texts(500, seed=5)
    assert len(set(texts)) == 500
    assert all(50 <= len(t) <= 600 for t in texts)
    assert max(len(t) for t in texts) > 300  # comments too, not only chat lines
