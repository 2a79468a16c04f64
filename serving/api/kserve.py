"""KServe v2 / Triton inference protocol over HTTP, on the main FastAPI app.

Routes (``/versions/{version}`` variants too): ``GET /v2``, ``/v2/health/live``,
``/v2/health/ready``, ``GET /v2/models/{name}`` (metadata), ``.../ready``,
``.../config``, ``.../stats``, ``POST .../infer``, ``GET /v2/models/stats``,
``POST /v2/repository/index``. Inference takes the JSON form (BYTES data
as strings) and Triton's binary tensor extension (``Inference-Header-Content-Length``),
so ``tritonclient.http`` works with its defaults. Errors leave as ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from serving.api.auth import audit, charge_and_check_model, project_view, require_access
from serving.api.body import parse_json, read_body, until_disconnect
from serving.api.request_id import note_access
from serving.engine.stats import model_statistics, repository_index
from serving.engine.types import Registry, readiness_error
from serving.errors import InvalidRequest, NotReady, clip
from serving.protocol import kserve

KSERVE_PREFIX = "/v2"
HEADER_LENGTH = "inference-header-content-length"
Handler = Callable[[Request, str, str], Awaitable[Response]]


def kserve_router(reg: Registry) -> APIRouter:
    settings = reg.settings
    router = APIRouter(prefix=KSERVE_PREFIX, tags=["KServe v2"])
    keyed = [Depends(require_access(reg, "kserve"))]

    def route(method: str, suffix: str, summary: str) -> Callable[[Handler], Handler]:
        """Register ``fn`` on /models/{name}<suffix> and /models/{name}/versions/{v}<suffix>."""

        def deco(fn: Handler) -> Handler:
            async def endpoint(request: Request, name: str, version: str = "") -> Response:
                return await fn(request, name, version)

            for path in (
                f"/models/{{name}}{suffix}",
                f"/models/{{name}}/versions/{{version}}{suffix}",
            ):
                router.add_api_route(
                    path,
                    endpoint,
                    methods=[method],
                    summary=summary,
                    dependencies=keyed,  # every per-model route: model names are not public
                )
            return fn

        return deco

    # before /models/{name}: "stats" is not a model name
    @router.get("/models/stats", summary="Every model's statistics", dependencies=keyed)
    async def all_stats() -> dict[str, Any]:
        return {"model_stats": model_statistics(list(reg.engines.values()))}

    @router.post("/repository/index", summary="Served models and their state", dependencies=keyed)
    async def repository(request: Request) -> list[dict[str, str]]:
        body = parse_json(await read_body(request, settings.max_request_body_bytes) or b"{}")
        index = repository_index(list(reg.engines.values()))
        if isinstance(body, dict) and body.get("ready") is True:
            index = [m for m in index if m["state"] == "READY"]
        return index

    @router.get("", summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": kserve.SERVER_NAME, "version": kserve.SERVER_VERSION, "extensions": []}

    @router.get("/health/live", summary="Liveness")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/health/ready", summary="Readiness: every model loaded and warmed")
    async def ready() -> Response:
        if (err := readiness_error(reg)) is not None:
            raise err
        return JSONResponse({"ready": True})

    @route("GET", "", "Model metadata (column names in parameters.categories)")
    async def metadata(request: Request, name: str, version: str) -> Response:
        engine = reg.resolve(name, version)
        body = kserve.model_metadata(engine.name, engine.version, engine.categories)
        body["parameters"] = {"categories": list(engine.categories)}
        return JSONResponse(body)

    @route("GET", "/ready", "Model readiness")
    async def model_ready(request: Request, name: str, version: str) -> Response:
        engine = reg.resolve(name, version)
        if not engine.ready:
            raise NotReady(f"Model {engine.name!r} is still loading.")
        return JSONResponse({"name": engine.name, "ready": True})

    @route("GET", "/stats", "Model statistics (Triton form; cumulative since load)")
    async def stats(request: Request, name: str, version: str) -> Response:
        return JSONResponse({"model_stats": model_statistics([reg.resolve(name, version)])})

    @route("GET", "/config", "Model config (Triton form)")
    async def config(request: Request, name: str, version: str) -> Response:
        engine = reg.resolve(name, version)
        c = len(engine.categories)
        return JSONResponse(
            {
                "name": engine.name,
                "platform": kserve.PLATFORM,
                "max_batch_size": 0,
                "input": [{"name": kserve.INPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
                "output": [
                    {"name": kserve.SCORES, "data_type": "TYPE_FP32", "dims": [-1, c]},
                    {"name": kserve.FLAGS, "data_type": "TYPE_BOOL", "dims": [-1, c]},
                ],
                "parameters": {
                    "categories": {"string_value": kserve.categories_json(engine.categories)}
                },
            }
        )

    @route("POST", "/infer", "Inference: TEXT (BYTES [n]) -> SCORES (FP32), FLAGS (BOOL) [n, C]")
    async def infer(request: Request, name: str, version: str) -> Response:
        engine = reg.resolve(name, version)
        header, binary = split_body(
            await read_body(request, settings.max_request_body_bytes),
            request.headers.get(HEADER_LENGTH),
        )
        texts = parse_inputs(
            header, binary, settings.max_inputs_per_request, settings.max_input_chars
        )
        wanted = parse_outputs(header)
        charge_and_check_model(request, texts, engine.name)
        reg.metrics.requests.labels(engine.name).inc()
        result = project_view(request, await until_disconnect(request, engine.classify(texts)))
        audit(request, engine, result, texts)
        note_access(request.scope, engine.name, len(texts), result.timings.tokens)
        arrays = kserve.output_arrays(result.scores, result.flags)
        outputs, blobs = [], []
        for out_name, binary_out in wanted:
            datatype, arr = arrays[out_name]
            out: dict[str, Any] = {"name": out_name, "datatype": datatype, "shape": list(arr.shape)}
            if binary_out:
                blobs.append(arr.tobytes())
                out["parameters"] = {"binary_data_size": len(blobs[-1])}
            else:
                out["data"] = arr.ravel().tolist()
            outputs.append(out)
        body: dict[str, Any] = {
            "model_name": engine.name,
            "model_version": engine.version,
            "outputs": outputs,
        }
        if "id" in header:
            body["id"] = header["id"]
        head = json.dumps(body, separators=(",", ":")).encode()
        cached = {"x-cached-inputs": str(result.timings.cached_inputs)}
        if not blobs:
            return Response(head, media_type="application/json", headers=cached)
        return Response(
            head + b"".join(blobs),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(head)), **cached},
        )

    return router


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """JSON inference header (+ binary tensor data after it when ``header_length`` is set)."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidRequest(f"Bad {HEADER_LENGTH} header {clip(header_length)}.")
        size = int(header_length)
    header = parse_json(body[:size], "inference request")
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidRequest(
            'The inference request must be an object with an "inputs" array.', param="inputs"
        )
    return header, body[size:]


def parse_inputs(
    header: dict[str, Any], binary: bytes, max_inputs: int, max_chars: int
) -> list[str]:
    tensors = [t for t in header["inputs"] if isinstance(t, dict)]
    if len(tensors) != len(header["inputs"]) or not tensors:
        raise InvalidRequest(f"Send exactly one input tensor {kserve.INPUT!r}.", param="inputs")
    names = [str(t.get("name")) for t in tensors]
    text = next((t for t in tensors if t.get("name") == kserve.INPUT), tensors[0])
    shape = text.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise InvalidRequest(
            f"Input {kserve.INPUT!r} needs an integer 'shape'.", param=kserve.INPUT
        )
    n = kserve.check_text_input(str(text.get("name")), str(text.get("datatype")), shape, names)
    size = _params(text).get("binary_data_size")
    items: list[bytes | str]
    if size is not None:  # the only input, so its binary data starts at offset 0
        if not isinstance(size, int) or size != len(binary):
            raise InvalidRequest(
                f"binary_data_size {clip(size)} does not match the {len(binary)} bytes sent.",
                param=kserve.INPUT,
            )
        items = list(kserve.split_bytes_tensor(binary))
    else:
        items = list(_flatten(text.get("data")))
    return kserve.decode_texts(items, n, max_inputs, max_chars)


def _flatten(data: Any) -> list[str]:
    if not isinstance(data, list):
        raise InvalidRequest(
            f"Input {kserve.INPUT!r} needs a 'data' array of strings.", param=kserve.INPUT
        )
    flat: list[str] = []
    for d in data:
        if isinstance(d, list):
            flat.extend(_flatten(d))
        elif isinstance(d, str):
            flat.append(d)
        else:
            raise InvalidRequest(
                f"{kserve.INPUT} data must be strings (datatype BYTES), not {type(d).__name__}.",
                param=kserve.INPUT,
            )
    return flat


def parse_outputs(header: dict[str, Any]) -> list[tuple[str, bool]]:
    """(output name, send as binary) pairs; binary by request or per-output parameters."""
    default_binary = bool(_params(header).get("binary_data_output", False))
    requested = header.get("outputs") or []
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise InvalidRequest('"outputs" must be an array of objects.', param="outputs")
    names = kserve.check_outputs([str(o.get("name")) for o in requested])
    binary = {
        str(o.get("name")): bool(_params(o).get("binary_data", default_binary)) for o in requested
    }
    return [(n, binary.get(n, default_binary)) for n in names]


def _params(obj: dict[str, Any]) -> dict[str, Any]:
    p = obj.get("parameters")
    return p if isinstance(p, dict) else {}
