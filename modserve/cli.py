"""``modserve <command>``: the server, the model pipeline and the benchmarks in one command.

It sits above ``serving``, ``training`` and ``benchmarks`` and only dispatches: every flag
after the command is that command's own (``modserve <command> --help``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from serving.cli import COMMANDS as SERVER_COMMANDS
from serving.cli import main as serving_main

BENCH_HELP = "load test modserve and its peers side by side (benchmarks.load)"


def _pipeline_commands() -> dict[str, tuple[Callable[[list[str]], int], str]]:
    from training.cli import COMMANDS

    return {name: (fn, (fn.__doc__ or "").strip().splitlines()[0]) for name, fn in COMMANDS.items()}


def _bench(argv: list[str]) -> int:
    try:
        from benchmarks.load import main
    except ImportError as e:  # the runtime install (`make serve`) has no benchmark tools
        sys.stderr.write(f"modserve bench needs the development tools ({e.name} is missing): "
                         "make install, or pip install -e '.[dev]'\n")  # fmt: skip
        return 2
    return int(main(argv) or 0)


def usage() -> str:
    rows = [
        *SERVER_COMMANDS.items(),
        *((name, help_) for name, (_, help_) in _pipeline_commands().items()),
        ("bench", BENCH_HELP),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name:<{width}}  {help_}" for name, help_ in rows]
    return "usage: modserve <command> [options]\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command in SERVER_COMMANDS:
        return serving_main(argv)
    if command == "bench":
        return _bench(rest)
    pipeline = _pipeline_commands()
    if command in pipeline:
        return int(pipeline[command][0](rest) or 0)
    asked = command in ("-h", "--help")
    (sys.stdout if asked else sys.stderr).write(usage())
    return 0 if asked else 2
