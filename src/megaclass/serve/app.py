"""The HTTP API over a trained model (``megaclass serve``), a FastAPI app.

Wire format (clients rely on it):
- ``POST /v1/predict`` ``{"inputs": [[...], ...], "k": 10}``: raw inputs as the backbone takes
  them (feature rows, or item-id histories) -> ``{"ids": [[int, ...], ...], "scores": [[float,
  ...], ...]}``, one row per input, best first;
- ``POST /v1/search`` ``{"embeddings": [[...], ...], "k": 10}`` -> the same, for embeddings;
- ``GET /v1/info``: ``num_classes``, ``embedding_dim``, ``input_dim``, ``input_dtype``,
  ``index`` (the search and its settings), ``model_version`` (the export's training step);
- ``GET /healthz``: 200 once the model is loaded (the app exists only then).
A malformed request gets 422 with the reason, a body over ``max_body_bytes`` 413 (a POST
without a declared length 411), a request not answered within ``timeout_s`` 503, an internal
error 500 with an ``error_id`` that the log names with the traceback. Concurrent requests are
batched (``MicroBatcher``); the classes are ranked by a ``Searcher`` (exact, or the export's
graph index). The OpenAPI description is at
``/openapi.json`` (``/docs`` renders it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid

import torch
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from megaclass.inference import TrainedModel
from megaclass.serve.batching import MicroBatcher
from megaclass.serve.search import ExactSearch, Searcher

MAX_K = 1000  # classes one request may ask for
_log = logging.getLogger("megaclass.serve")


class PredictRequest(BaseModel):
    inputs: list[list[float]] = Field(description="rows as the backbone takes them")
    k: int = Field(10, ge=1, le=MAX_K, description="classes per row")


class SearchRequest(BaseModel):
    embeddings: list[list[float]] = Field(description="embeddings [N, embedding_dim]")
    k: int = Field(10, ge=1, le=MAX_K, description="classes per row")


class TopK(BaseModel):
    ids: list[list[int]] = Field(description="class ids per row, best first; -1 past the end")
    scores: list[list[float | None]] = Field(
        description="their scores (cosine x scale or dot product); null where an index found "
        "fewer than k classes"
    )


def create_app(
    model: TrainedModel,
    model_version: int | None = None,
    max_rows: int = 256,
    max_wait_s: float = 0.0,
    searcher: Searcher | None = None,
    timeout_s: float = 10.0,
    max_body_bytes: int = 16 << 20,
) -> FastAPI:
    """The API over ``model``, its classes ranked by ``searcher`` (default: exact, every class
    scored). ``max_rows`` and ``max_wait_s``: the micro-batching of concurrent requests
    (``MicroBatcher``); ``timeout_s``: a request's deadline; ``max_body_bytes``: the largest
    request body."""
    described = model.description
    searcher = searcher or ExactSearch(model.head)

    def predict(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return searcher.search(model.embed(rows, batch_size=max_rows), k)

    predict_batcher = MicroBatcher(predict, max_rows, max_wait_s)
    search_batcher = MicroBatcher(searcher.search, max_rows, max_wait_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        predict_batcher.close()
        search_batcher.close()

    app = FastAPI(
        title="megaclass", summary="top-k classes of a trained megaclass model", lifespan=lifespan
    )
    app.state.batchers = {"predict": predict_batcher, "search": search_batcher}
    app.add_middleware(_DeclaredBodyLimit, max_bytes=max_body_bytes)

    async def answer(batcher: MicroBatcher, rows: torch.Tensor, k: int, path: str):
        try:
            return _top_k(await asyncio.wait_for(batcher(rows, k), timeout_s))
        except asyncio.TimeoutError:
            raise HTTPException(
                503, f"not answered within {timeout_s:g} s: the server is overloaded"
            ) from None
        except Exception as error:  # the server's fault: logged under an id the client gets
            error_id = uuid.uuid4().hex[:12]
            _log.error("error %s on %s", error_id, path, exc_info=error)
            return JSONResponse(
                {"detail": "internal error (the server log has it)", "error_id": error_id},
                status_code=500,
            )

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info")
    def info() -> dict:
        return {
            "num_classes": described.num_classes,
            "embedding_dim": described.embedding_dim,
            "input_dim": described.input_dim,
            "input_dtype": described.input_dtype,
            "normalize": described.normalize,
            "scale": described.scale,
            "index": searcher.describe(),
            "batching": {"max_batch_rows": max_rows, "max_wait_ms": 1e3 * max_wait_s},
            "model_version": model_version,
        }

    @app.post("/v1/predict", response_model=TopK)
    async def predict_endpoint(request: PredictRequest) -> Response:
        dtype = torch.int64 if described.input_dtype == "int64" else torch.float32
        rows = _rows(request.inputs, described.input_dim, "inputs", dtype)
        k = _checked_k(request.k, described.num_classes)
        return await answer(predict_batcher, rows, k, "/v1/predict")

    @app.post("/v1/search", response_model=TopK)
    async def search_endpoint(request: SearchRequest) -> Response:
        rows = _rows(request.embeddings, described.embedding_dim, "embeddings", torch.float32)
        k = _checked_k(request.k, described.num_classes)
        return await answer(search_batcher, rows, k, "/v1/search")

    return app


def _rows(values: list[list[float]], width: int, name: str, dtype: torch.dtype) -> torch.Tensor:
    """values as a [N, width] tensor; 422 naming the row when a row has another width or a
    value that is not finite (or, for item ids, not a whole number)."""
    if not values:
        raise HTTPException(422, f"{name} must hold at least one row")
    for number, row in enumerate(values):
        if len(row) != width:
            raise HTTPException(422, f"{name}[{number}] has {len(row)} values, expected {width}")
        if not all(map(math.isfinite, row)):
            raise HTTPException(422, f"{name}[{number}] holds NaN or inf")
        if dtype == torch.int64 and any(value != int(value) or value < 0 for value in row):
            raise HTTPException(422, f"{name}[{number}] must hold item ids (whole numbers >= 0)")
    return torch.tensor(values, dtype=dtype)


def _checked_k(k: int, num_classes: int) -> int:
    if k > num_classes:
        raise HTTPException(422, f"k must be at most the {num_classes} classes, got {k}")
    return k


def _top_k(outputs: tuple[torch.Tensor, torch.Tensor]) -> Response:
    """The ``TopK`` body, encoded here: FastAPI would validate the built lists against the
    model again before encoding them."""
    ids, scores = outputs
    values = scores.float().tolist()
    if not torch.isfinite(scores).all():  # -inf where an index found fewer than k: JSON null
        values = [[v if math.isfinite(v) else None for v in row] for row in values]
    text = json.dumps({"ids": ids.tolist(), "scores": values}, separators=(",", ":"))
    return Response(text, media_type="application/json")


class _DeclaredBodyLimit:
    """Before a body is read: 413 naming the limit when its declared length is over it, 411
    when a POST declares none (a chunked body could be of any size). Plain ASGI:
    ``@app.middleware("http")`` costs a task and a stream per request."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length")
            refusal = None
            if length is None and scope["method"] == "POST":
                refusal = 411, "the request must declare its Content-Length"
            elif length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                refusal = 413, f"the body must be at most {self.max_bytes:,} bytes, got {length}"
            if refusal:
                status, detail = refusal
                await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)
