"""``modserve serve | classify | keys``: the server's own commands (also ``python -m serving.cli``).

Every ``serve`` flag is also a ``MODSERVE_<FLAG>`` environment variable (flags win). Run
``modserve serve --help`` for the full list. The umbrella ``modserve`` command
(``modserve/cli.py``) adds the model pipeline and the benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    ("--policy-file", "policy_file", Path, "projects, quotas, keys' scopes [MODSERVE_POLICY_FILE]"),
    ("--key-store", "key_store", Path, "SQLite file of hashed keys [MODSERVE_KEY_STORE]"),
    ("--log-level", "log_level", str, "debug | info | warning | error"),
    ("--log-format", "log_format", str, "text | json [MODSERVE_LOG_FORMAT]"),
]


def _add(p: argparse.ArgumentParser, flags: list[tuple[str, str, Any, str]]) -> None:
    from serving.config import Settings

    for flag, dest, typ, help_ in flags:
        default = Settings.model_fields[dest].default  # shown; None keeps env vars in charge
        p.add_argument(
            flag, dest=dest, type=typ, default=None, help=f"{help_} (default: {default})"
        )


class SettingsError(Exception):
    """A setting (flag or MODSERVE_* variable) has a bad value: one line for the user."""


def settings_from_args(args: argparse.Namespace) -> Any:
    """Settings from the flags given (others from MODSERVE_* variables and defaults); a bad
    value raises ``SettingsError`` naming the setting, its flag and variable, and why."""
    from pydantic import ValidationError

    from serving.config import Settings

    names = [d for _, d, _, _ in _MODEL_FLAGS + _SERVE_FLAGS]
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    try:
        return Settings(**overrides)  # Settings splits comma-separated lists itself
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        flag = next((f for f, d, _, _ in _MODEL_FLAGS + _SERVE_FLAGS if d == field), None)
        where = f"--{field.replace('_', '-')} / " if flag else ""
        raise SettingsError(
            f"bad setting {field} ({where}MODSERVE_{field.upper()}) = {err.get('input')!r}: "
            f"{err['msg']}"
        ) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.app import run
    from serving.gateway.policy import load_policy
    from serving.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)
    if settings.policy_file is not None:  # a bad one stops here, naming its line and field
        load_policy(settings.policy_file)
    if args.ray:
        return serve_on_ray(settings)
    return run(settings)


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


def cmd_keys(args: argparse.Namespace) -> int:
    """``modserve keys create|list|revoke``: the key store of MODSERVE_KEY_STORE."""
    import time

    from serving.config import Settings
    from serving.gateway.keys import SqliteKeyStore, parse_duration_s
    from serving.gateway.policy import load_policy
    from serving.text_table import aligned

    given = {k: getattr(args, k) for k in ("key_store", "policy_file") if getattr(args, k)}
    settings = Settings(**given)
    store = SqliteKeyStore(settings.key_store, cache_s=0)
    now = time.time()
    if args.action == "create":
        if settings.policy_file is None:
            raise SettingsError(
                "keys create needs the policy file: --policy-file or MODSERVE_POLICY_FILE"
            )
        policy = load_policy(settings.policy_file)
        if policy.project(args.project) is None:
            raise SettingsError(f"project {args.project!r} is not in {settings.policy_file} "
                                f"(projects: {', '.join(policy.projects)})")  # fmt: skip
        expires = now + parse_duration_s(args.expires) if args.expires else None
        try:
            record, key = store.create(args.project, args.scope, expires, args.name)
        except ValueError as e:
            raise SettingsError(str(e)) from None
        print(key)
        print(f"key id {record.key_id}, project {record.project_id}, scopes "
              f"{','.join(sorted(record.scopes))}, expires {_when(expires)}: store the key now, "
              "it is not shown again", file=sys.stderr)  # fmt: skip
        return 0
    if args.action == "revoke":
        if not store.revoke(args.key_id):
            where = settings.key_store
            print(f"modserve: no active key {args.key_id!r} in {where}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id} (servers stop accepting it within MODSERVE_KEY_CACHE_S)")
        return 0
    rows = [("key id", "project", "scopes", "state", "created", "expires", "name")]
    rows += [(r.key_id, r.project_id, ",".join(sorted(r.scopes)), r.state(now),
              _when(r.created_at), _when(r.expires_at), r.name)
             for r in store.list(args.project)]  # fmt: skip
    print("\n".join(aligned(rows)))
    return 0


def _when(epoch_s: float | None) -> str:
    import time

    return "never" if epoch_s is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch_s))


def _keys_parser(sub: Any) -> None:
    from serving.gateway.keys import SCOPES

    keys = sub.add_parser("keys", help=COMMANDS["keys"])
    keys.add_argument("--key-store", type=Path, default=None, help="[MODSERVE_KEY_STORE]")
    keys.add_argument("--policy-file", type=Path, default=None, help="[MODSERVE_POLICY_FILE]")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; prints it once")
    create.add_argument("--project", required=True, help="a project of the policy file")
    create.add_argument("--scope", action="append", required=True, choices=SCOPES,
                        help="repeat for several scopes; admin = every scope")  # fmt: skip
    create.add_argument("--expires", default="", help="e.g. 30d, 12h (default: never)")
    create.add_argument("--name", default="", help="a note for `keys list`")
    listing = actions.add_parser("list", help="keys with project, scopes, state")
    listing.add_argument("--project", default=None)
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    keys.set_defaults(func=cmd_keys)


def cmd_classify(args: argparse.Namespace) -> int:
    from serving.engine.metrics import Metrics
    from serving.engine.registry import ModelRegistry
    from serving.protocol.openai import build_response, openai_view

    settings = settings_from_args(args)

    async def run() -> dict[str, Any]:
        reg = ModelRegistry(settings, Metrics())
        await reg.start()
        try:
            engine = reg.resolve(None)
            r = await engine.classify(list(args.text))
            view = openai_view(engine.label_map, r.categories, r.scores, r.flags)
            return build_response(engine.name, *view, r.extras)
        finally:
            await reg.stop()

    print(json.dumps(asyncio.run(run()), indent=2))
    return 0


COMMANDS = {  # the server's commands and their one-line help (also in `modserve --help`)
    "serve": "run the HTTP + gRPC server (one process, or Ray Serve with --ray)",
    "classify": "classify text and print the moderation JSON",
    "keys": "create, list and revoke API keys (projects and scopes: MODSERVE_POLICY_FILE)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modserve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help=COMMANDS["serve"])
    _add(serve, _MODEL_FLAGS + _SERVE_FLAGS)
    serve.add_argument(
        "--ray",
        action="store_true",
        help="run as Ray Serve deployments (ingress + classifier replicas); "
        "scaling from MODSERVE_RAY_* variables",
    )
    serve.set_defaults(func=cmd_serve)
    classify = sub.add_parser("classify", help=COMMANDS["classify"])
    classify.add_argument("text", nargs="+", help="one or more texts")
    _add(classify, _MODEL_FLAGS)
    classify.set_defaults(func=cmd_classify)
    _keys_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from serving.gateway.policy import PolicyError

    try:
        return int(args.func(args))
    except (SettingsError, PolicyError) as e:
        print(f"modserve: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
