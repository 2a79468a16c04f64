"""KServe v2 / Triton ``inference.GRPCInferenceService``, so tritonclient.grpc and
perf_analyzer work unchanged. Messages come from the protos that ship in the
``tritonclient`` package. Tensors: see serving/protocol/kserve.py. Column names:
``ModelConfig`` -> ``config.parameters["categories"].string_value`` (JSON array).
ModelStreamInfer and the repository / shared-memory / trace RPCs stay UNIMPLEMENTED.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serving.engine.stats import model_statistics, repository_index
from serving.engine.types import Classifier
from serving.errors import InvalidRequest, ModerationError
from serving.protocol import kserve
from serving.rpc.common import Context, ServicerBase
from serving.rpc.interceptors import served_model

_CONFIG_TYPES = {"BYTES": mc.TYPE_STRING, "FP32": mc.TYPE_FP32, "BOOL": mc.TYPE_BOOL}


def _tensors(specs: list[dict[str, Any]]) -> list[Any]:
    return [pb.ModelMetadataResponse.TensorMetadata(**s) for s in specs]


MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"  # the audit record's route


class KServeServicer(ServicerBase, service_pb2_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.registry.ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        try:
            # like every per-model call: model names are not public
            self.check_auth(context, "kserve")
        except Exception as e:
            await self.fail(context, e)
        try:
            engine = self.registry.resolve(request.name, request.version)
        except ModerationError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=engine.ready)

    async def _authorized_model(
        self, request: pb.ModelMetadataRequest | pb.ModelConfigRequest, context: Context
    ) -> Classifier:
        """Auth, then the engine for ``request.name``/``version``; aborts the call on error."""
        try:
            self.check_auth(context, "kserve")
            engine = self.registry.resolve(request.name, request.version)
        except Exception as e:
            await self.fail(context, e)
        return engine

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=kserve.SERVER_NAME, version=kserve.SERVER_VERSION)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        engine = await self._authorized_model(request, context)
        meta = kserve.model_metadata(engine.name, engine.version, engine.categories)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=_tensors(meta["inputs"]),
            outputs=_tensors(meta["outputs"]),
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        engine = await self._authorized_model(request, context)
        meta = kserve.model_metadata(engine.name, engine.version, engine.categories)
        cfg = mc.ModelConfig(
            name=engine.name,
            platform=kserve.PLATFORM,
            max_batch_size=0,  # TEXT is [n] itself; perf_analyzer: --shape TEXT:<n>
            input=[
                mc.ModelInput(
                    name=t["name"], data_type=_CONFIG_TYPES[t["datatype"]], dims=t["shape"]
                )
                for t in meta["inputs"]
            ],
            output=[
                mc.ModelOutput(
                    name=t["name"], data_type=_CONFIG_TYPES[t["datatype"]], dims=t["shape"]
                )
                for t in meta["outputs"]
            ],
        )
        cfg.parameters["categories"].string_value = kserve.categories_json(engine.categories)
        return pb.ModelConfigResponse(config=cfg)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        """Triton's statistics (``serving.engine.stats``), as over HTTP."""
        try:
            self.check_auth(context, "kserve")
            engines = list(self.registry.engines.values())
            if request.name:
                engines = [self.registry.resolve(request.name, request.version)]
        except Exception as e:
            await self.fail(context, e)
        return pb.ModelStatisticsResponse(
            model_stats=[
                json_format.ParseDict(s, pb.ModelStatistics()) for s in model_statistics(engines)
            ]
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        """Every served model and its state (READY once loaded and warmed)."""
        try:
            self.check_auth(context, "kserve")
        except Exception as e:
            await self.fail(context, e)
        index = repository_index(list(self.registry.engines.values()))
        if request.ready:
            index = [m for m in index if m["state"] == "READY"]
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in index]
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        try:
            return await self._infer(request, context)
        except Exception as e:
            await self.fail(context, e, MODEL_INFER)

    async def _infer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        principal = self.check_auth(context, "kserve")
        engine = self.registry.resolve(request.model_name, request.model_version)
        served_model.set(engine.name)
        inputs = list(request.inputs)
        names = [t.name for t in inputs]
        text = inputs[0] if inputs else pb.ModelInferRequest.InferInputTensor()
        n = kserve.check_text_input(text.name, text.datatype, list(text.shape), names)
        raw = request.raw_input_contents
        if raw:
            if len(raw) != len(inputs):
                raise InvalidRequest(
                    f"raw_input_contents has {len(raw)} entries for {len(inputs)} input(s).",
                    param="raw_input_contents",
                )
            items: list[bytes | str] = list(kserve.split_bytes_tensor(raw[0]))
        else:
            items = list(text.contents.bytes_contents)
        s = self.settings
        texts = kserve.decode_texts(items, n, s.max_inputs_per_request, s.max_input_chars)
        wanted = kserve.check_outputs([o.name for o in request.outputs])
        async with self.admitted(principal, texts, engine.name):
            self.metrics.requests.labels(engine.name).inc()
            result = await engine.classify(texts, timeout_s=self.time_left_s(context))
        result = self.decided(context, MODEL_INFER, principal, engine, result, texts)
        arrays = kserve.output_arrays(result.scores, result.flags)
        response = pb.ModelInferResponse(
            model_name=engine.name, model_version=engine.version, id=request.id
        )
        for name in wanted:
            datatype, arr = arrays[name]
            response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
            response.raw_output_contents.append(arr.tobytes())
        return response
