"""Run a Ray Serve app on a local Ray (``num_cpus=2``) until SIGTERM, on a loopback port.

``python -m benchmarks.peers.ray_runner --app modserve|ray-batch --model-dir DIR --port P``.
``modserve`` is ``serving.deployments.build_app`` (ingress + one classifier replica with
1 CPU); ``ray-batch`` is peer (b).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

import ray
from ray import serve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--app", choices=("modserve", "ray-batch"), required=True)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--num-cpus", type=int, default=2)
    a = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ray.init(num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    if a.app == "modserve":
        from serving.deployments import build_app

        app = build_app(
            {
                "model_repo": str(a.model_dir.parent),
                "model": a.model_dir.name,
                "ray": {"num_cpus_per_replica": 1},
            }
        )
    else:
        from benchmarks.peers.ray_batch_server import build

        app = build(a.model_dir)
    serve.run(app, name=a.app, blocking=False)
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
