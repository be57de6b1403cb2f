"""The OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/models`, `/health`) over the Triton server.

A thin frontend: each request is validated and mapped (openai_schema.py), its media resolved
(openai_media.py), then answered by the same gRPC client as every other caller
(videoneva.serving.Client, which returns videoneva.schema.Answer and streams text pieces), so
there is no second inference path. FastAPI serves it on uvicorn; streamed answers are Server-Sent
Events in OpenAI's chunk format. Client calls block, so they run on a thread pool (each thread keeps
its own gRPC stream); the event loop only parses, fetches and writes.

Errors use OpenAI's error object: 400 a bad request or media (the message names it, including the
model server's own refusals), 401 a missing or wrong API key, 404 an unknown model, 413 a body or
media item over the limit, 503 while the model server is not ready or unreachable.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from videoneva.schema import RequestError
from videoneva.serving.client import Client, RequestCancelled, RequestFailed, ServerUnavailable
from videoneva.serving.openai_media import MediaPolicy, TooLarge, resolve
from videoneva.serving.openai_schema import (ChatRequest, chunk, completion, completion_id, error_body, extension_of,
                                             logprobs_of, usage_of, wire_call)

log = logging.getLogger(__name__)
INTERNAL = "internal error: "  # the model server's prefix for a failure that is not the request's fault


@dataclass
class OpenAISettings:
    """The frontend's settings.

    Attributes:
        grpc_url: the Triton server's gRPC address.
        model_id: the model name requests must give (and /v1/models lists).
        media: where media may come from and how large.
        api_key: when set, requests must send `Authorization: Bearer <key>` (/health excepted).
        max_body_bytes: the largest request body (default: room for one base64 media item + 1 MiB).
        workers: requests answered at once (threads, each with its own gRPC stream).
        timeout: seconds one answer may take.
    """

    grpc_url: str
    model_id: str
    media: MediaPolicy = field(default_factory=MediaPolicy)
    api_key: Optional[str] = None
    max_body_bytes: Optional[int] = None
    workers: int = 64
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.max_body_bytes is None:
            self.max_body_bytes = -(-self.media.max_bytes * 4 // 3) + 2**20


class HTTPError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _status_of(exc: Exception) -> HTTPError:
    """The HTTP error for a failure of the request, its media, or the model server."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, TooLarge):
        return HTTPError(413, str(exc), "request_too_large")
    if isinstance(exc, RequestError):
        return HTTPError(400, str(exc), "invalid_request")
    if isinstance(exc, RequestFailed):
        msg = str(exc)
        return HTTPError(500, msg, "internal_error") if INTERNAL in msg else HTTPError(400, msg, "invalid_request")
    if isinstance(exc, ServerUnavailable):
        return HTTPError(503, f"the model server is not available: {exc}", "service_unavailable")
    log.exception("unexpected error answering a request")
    return HTTPError(500, f"{type(exc).__name__}: {exc}", "internal_error")


def _validation_message(exc) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: this server does not take this field" if e["type"] == "extra_forbidden"
                     else f"{loc}: {e['msg']}")
    return "; ".join(parts)


def create_app(settings: OpenAISettings, client: Optional[Client] = None):
    """The FastAPI app (client: a Client on settings.grpc_url unless given)."""
    client = client or Client(settings.grpc_url, timeout=settings.timeout, retries=1, backoff=0.2)
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app):
        state["pool"] = ThreadPoolExecutor(settings.workers, thread_name_prefix="videoneva-openai")
        state["http"] = httpx.AsyncClient()
        try:
            yield
        finally:
            await state["http"].aclose()
            state["pool"].shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="videoneva OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(HTTPError)
    async def _error(_request, exc: HTTPError):
        return JSONResponse(error_body(exc.message, exc.status, exc.code, exc.param), status_code=exc.status)

    def run(fn, *args, **kwargs):
        return asyncio.get_running_loop().run_in_executor(state["pool"], partial(fn, *args, **kwargs))

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header[:7].lower() == "bearer " else ""
        if not given or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPError(401, "missing or wrong API key: send Authorization: Bearer <key>", "invalid_api_key")

    async def read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"the request body is {declared} bytes; this server takes at most {limit}",
                            "request_too_large")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise HTTPError(413, f"the request body is over {limit} bytes, the most this server takes",
                                "request_too_large")
        return bytes(body)

    @app.get("/health")
    async def health():
        if await run(client.ready):
            return {"status": "ready", "model": settings.model_id}
        raise HTTPError(503, f"the model server at {settings.grpc_url} is not ready", "service_unavailable")

    def model_card() -> dict:
        return {"id": settings.model_id, "object": "model", "created": 0, "owned_by": "videoneva"}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request):
        authorize(request)
        if model != settings.model_id:
            raise HTTPError(404, f"model {model!r} not found; this server serves {settings.model_id!r}",
                            "model_not_found", "model")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            authorize(request)
            body = await read_body(request)
            try:
                req = ChatRequest.model_validate_json(body)
            except ValidationError as exc:
                raise HTTPError(400, _validation_message(exc), "invalid_request") from None
            if req.model != settings.model_id:
                raise HTTPError(404, f"model {req.model!r} not found; this server serves {settings.model_id!r}",
                                "model_not_found", "model")
            call = wire_call(req)
            kwargs = dict(call.settings, messages=call.messages or None)
            if call.media is not None:
                kwargs.update(await resolve(call.media, settings.media, state["http"]))
            if req.stream:
                return await stream(req, call.text, kwargs)
            answer = await run(client.answer, call.text, **kwargs)
            return JSONResponse(completion(answer, completion_id(), settings.model_id))
        except Exception as exc:  # noqa: BLE001  every failure becomes an OpenAI error object
            raise _status_of(exc) from None

    async def stream(req: ChatRequest, text: str, kwargs: dict):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        gone = threading.Event()  # the HTTP client went away: the next piece cancels the request

        def on_delta(piece: str) -> None:
            if gone.is_set():
                raise RequestCancelled("the HTTP client disconnected")
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        future = run(client.answer, text, on_delta=on_delta, **kwargs)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even after a disconnect
        future.add_done_callback(lambda _f: queue.put_nowait(None))
        first = await queue.get()
        if first is None:
            future.result()  # a refused request raises here, before any event: an error with its status
        return StreamingResponse(events(req, first, queue, future, gone), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def events(req: ChatRequest, piece, queue: asyncio.Queue, future, gone: threading.Event):
        try:
            async for event in _events(req, piece, queue, future):
                yield event
        finally:  # the answer ended, or the client disconnected mid-stream (then this stops generation)
            gone.set()

    async def _events(req: ChatRequest, piece, queue: asyncio.Queue, future):
        cid, created = completion_id(), int(time.time())
        usage = bool(req.stream_options and req.stream_options.include_usage)
        make = partial(chunk, cid, settings.model_id, created, with_usage=usage)

        def sse(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        yield sse(make({"role": "assistant", "content": ""}))
        while piece is not None:
            if piece:
                yield sse(make({"content": piece}))
            piece = await queue.get()
        try:
            answer = future.result()
        except Exception as exc:  # noqa: BLE001  the answer broke off after the stream began
            err = _status_of(exc)
            yield sse(error_body(err.message, err.status, err.code))
            return
        yield sse(make({}, answer.finish_reason, logprobs=logprobs_of(answer), videoneva=extension_of(answer)))
        if usage:
            yield sse(make(None, usage=usage_of(answer)))
        yield "data: [DONE]\n\n"

    return app


class OpenAIServer:
    """The app on uvicorn in a background thread, bound to host:port (0: a free port)."""

    def __init__(self, settings: OpenAISettings, host: str = "127.0.0.1", port: int = 0):
        self.settings, self.host, self.port = settings, host, port
        self._server, self._thread = None, None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "OpenAIServer":
        import socket

        import uvicorn

        from videoneva.serving.server import ServeError

        # IPPROTO_TCP named: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say so, and with
        # Nagle on, each small SSE chunk after the first waits for the client's delayed ACK (~40 ms)
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ServeError(f"openai_port={self.port}: port {self.port} on {self.host} is not available "
                             f"({exc.strerror}); stop what uses it or pass openai_port=<another port>") from None
        self.port = sock.getsockname()[1]
        started = threading.Event()

        class _Server(uvicorn.Server):
            async def startup(self, sockets=None):
                await super().startup(sockets)
                started.set()

        config = uvicorn.Config(create_app(self.settings), log_level="warning", access_log=False, lifespan="on")
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="videoneva-openai")
        self._thread.start()
        while not started.wait(0.1):
            if not self._thread.is_alive() or timeout <= 0:
                raise ServeError(f"the OpenAI API on {self.url} did not start")
            timeout -= 0.1
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
            self._server = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
