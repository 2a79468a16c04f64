"""``modserve serve | classify | train | eval | calibrate | bench``.

Every ``serve`` flag is also a ``MODSERVE_<FLAG>`` environment variable
(flags win). Run ``modserve serve --help`` for the full list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from local directories only
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

# (flag, Settings field, type, help) for the options shared by serve and classify.
_MODEL_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--model-repo", "model_repo", Path, "directory of model folders [MODSERVE_MODEL_REPO]"),
    ("--model", "model", str, "default model folder name [MODSERVE_MODEL]"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N [MODSERVE_DEVICE]"),
    ("--dtype", "dtype", str, "auto | float32 | float16 | bfloat16 | int8 [MODSERVE_DTYPE]"),
]
_SERVE_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--host", "host", str, "interface to bind [MODSERVE_HOST]"),
    ("--port", "port", int, "HTTP port, default 8000 [MODSERVE_PORT]"),
    ("--grpc-port", "grpc_port", int, "gRPC port, default 8001, 0 = off [MODSERVE_GRPC_PORT]"),
    ("--max-batch-tokens", "max_batch_tokens", int, "padded tokens per batch"),
    ("--max-batch-wait-ms", "max_batch_wait_ms", float, "max wait to fill a batch"),
    ("--api-keys", "api_keys", str, "comma-separated bearer keys [MODSERVE_API_KEYS]"),
    ("--log-level", "log_level", str, "debug | info | warning | error"),
]


def _add(p: argparse.ArgumentParser, flags: list[tuple[str, str, Any, str]]) -> None:
    for flag, dest, typ, help_ in flags:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_)


def settings_from_args(args: argparse.Namespace) -> Any:
    from serving.config import Settings

    names = [d for _, d, _, _ in _MODEL_FLAGS + _SERVE_FLAGS]
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if isinstance(overrides.get("api_keys"), str):
        overrides["api_keys"] = [k for k in overrides["api_keys"].split(",") if k]
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from serving.api.openai import create_app

    settings = settings_from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.ray:
        return serve_on_ray(settings)
    app = create_app(settings)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False
    )
    return 0


def serve_on_ray(settings: Any) -> int:
    """Start (or join, with MODSERVE_RAY_ADDRESS) Ray and run the Serve app until Ctrl-C."""
    import ray
    from ray import serve

    from serving.config import RayServeSettings
    from serving.deployments import build_app

    ray_cfg = RayServeSettings()
    ray.init(address=ray_cfg.address or None, include_dashboard=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    args = {**settings.model_dump(mode="json"), "ray": ray_cfg.model_dump(mode="json")}
    serve.run(build_app(args), name="modserve", route_prefix="/", blocking=True)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from serving.engine.metrics import Metrics
    from serving.engine.registry import ModelRegistry
    from serving.protocol.openai import build_response

    settings = settings_from_args(args)

    async def run() -> dict[str, Any]:
        reg = ModelRegistry(settings, Metrics())
        await reg.start()
        try:
            engine = reg.resolve(None)
            r = await engine.classify(list(args.text))
            return build_response(engine.name, r.categories, r.scores, r.flags, r.extras)
        finally:
            await reg.stop()

    print(json.dumps(asyncio.run(run()), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modserve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP + gRPC server (one process, embedded model)")
    _add(serve, _MODEL_FLAGS + _SERVE_FLAGS)
    serve.add_argument(
        "--ray",
        action="store_true",
        help="run as Ray Serve deployments (ingress + classifier replicas); "
        "scaling from MODSERVE_RAY_* variables",
    )
    serve.set_defaults(func=cmd_serve)
    classify = sub.add_parser("classify", help="classify text and print the moderation JSON")
    classify.add_argument("text", nargs="+", help="one or more texts")
    _add(classify, _MODEL_FLAGS)
    classify.set_defaults(func=cmd_classify)
    bench = sub.add_parser(
        "bench", help="load test modserve and peers (benchmarks.load)", add_help=False
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=lambda a: cmd_bench(a.rest))
    for name, help_ in (
        ("train", "train a moderation model"),
        ("eval", "evaluate a model directory on labelled JSONL"),
        ("calibrate", "choose per-category thresholds on validation data"),
        ("export", "calibrate, gate int8, evaluate and write a trained run into model_repo/"),
    ):
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_training_command(name))
    return parser


def _training_command(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        return run_training(name, args.rest)

    return run


TRAINING_COMMANDS = ("train", "eval", "calibrate", "export")


def run_training(name: str, argv: list[str]) -> int:
    from training import cli as training_cli

    fn = getattr(training_cli, f"{name}_main")
    return int(fn(argv) or 0)


def cmd_bench(argv: list[str]) -> int:
    from benchmarks.load import main as bench_main

    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # every flag after it is benchmarks.load's (incl. --help)
        return cmd_bench(argv[1:])
    if argv[:1] and argv[0] in TRAINING_COMMANDS:  # flags after it are the pipeline's
        return run_training(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
