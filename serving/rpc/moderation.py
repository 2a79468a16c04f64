"""``modserve.v1.Moderation`` (proto/modserve/v1/moderation.proto): the OpenAI
moderation schema over gRPC, unary and bidirectional streaming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from serving.gateway.access import Principal
from serving.protocol.limits import check_texts
from serving.protocol.openai import echoed_model, full_taxonomy, new_id, openai_view
from serving.rpc.common import Context, ServicerBase
from serving.rpc.interceptors import served_model

try:
    from serving._proto.modserve.v1 import moderation_pb2 as pb
    from serving._proto.modserve.v1 import moderation_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - depends on the install step
    raise ImportError(
        "The gRPC code for proto/modserve/v1/moderation.proto is not generated "
        "(serving/_proto/ is missing or stale). Run `make install` or "
        "`python -m serving.rpc.protogen` (needs grpcio-tools), or serve with --grpc-port 0."
    ) from e

SERVICE_NAME = "modserve.v1.Moderation"
MODERATE = f"/{SERVICE_NAME}/Moderate"  # audit record routes
MODERATE_STREAM = f"/{SERVICE_NAME}/ModerateStream"
STREAM_WINDOW = 32  # requests of one stream classified concurrently; answers keep their order


class ModerationServicer(ServicerBase, pb_grpc.ModerationServicer):
    async def Moderate(self, request: pb.ModerateRequest, context: Context) -> pb.ModerateResponse:
        try:
            principal = self.check_auth(context, "moderate")
            return await self._moderate(request, context, principal)
        except Exception as e:
            await self.fail(context, e, MODERATE)

    async def ModerateStream(
        self, request_iterator: AsyncIterator[pb.ModerateRequest], context: Context
    ) -> AsyncIterator[pb.ModerateResponse]:
        try:
            principal = self.check_auth(context, "moderate")
        except Exception as e:
            await self.fail(context, e)
        pending: asyncio.Queue[asyncio.Future[pb.ModerateResponse] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    pending.put_nowait(
                        asyncio.ensure_future(self._moderate(request, context, principal))
                    )
            finally:
                pending.put_nowait(None)

        reader = asyncio.ensure_future(read())
        error: Exception | None = None
        try:
            while (future := await pending.get()) is not None:
                try:
                    response = await future
                finally:
                    slots.release()
                yield response
            await reader  # re-raise a failure of the request stream itself
        except Exception as e:
            error = e
        finally:
            reader.cancel()
            while not pending.empty():
                if (left := pending.get_nowait()) is not None:
                    left.cancel()
        if error is not None:
            await self.fail(context, error, MODERATE_STREAM)

    async def _moderate(
        self, request: pb.ModerateRequest, context: Context, principal: Principal
    ) -> pb.ModerateResponse:
        s = self.settings
        texts = check_texts(request.input, s.max_inputs_per_request, s.max_input_chars)
        engine = self.registry.resolve(request.model or None)
        served_model.set(engine.name)
        async with self.admitted(principal, texts, engine.name):
            self.metrics.requests.labels(engine.name).inc()
            result = await engine.classify(texts, timeout_s=self.time_left_s(context))
        result = self.decided(context, MODERATE, principal, engine, result, texts)
        response = pb.ModerateResponse(id=new_id(), model=echoed_model(request.model, engine.name))
        cats, scores, flags, unscored = full_taxonomy(
            *openai_view(engine.label_map, result.categories, result.scores, result.flags)
        )
        for row_s, row_f in zip(scores.tolist(), flags.tolist(), strict=True):
            r = response.results.add(flagged=any(row_f), unscored_categories=unscored)
            r.categories.update(zip(cats, (bool(f) for f in row_f), strict=True))
            r.category_scores.update(zip(cats, row_s, strict=True))
        return response


def add_to_server(servicer: ModerationServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_ModerationServicer_to_server(servicer, server)
