"""Triton model `llm`: prompt ids + prompt table (TensorRT-LLM multimodal convention) → token ids.

Decoupled, and batching in flight: every request goes to the instance's one executor (the CPU
LLMs' BatchingLanguageModel, or TensorRT-LLM's own executor on GPU), which decodes all requests in
flight together and answers each through its own response sender: with `streaming`, the first id
at once and then the ids gathered over each `stream_interval_ms` (0: every id; a response through
BLS costs far more than a decode step of a small model, so one per id would cap a busy server);
without streaming, the ids gathered over PROGRESS_INTERVAL_S (the entry model checks for a
cancelled client between them); then the final response with every id, the log-probs and the
finish reason. Responses are sent from a thread of their own, in the order the executor makes them,
so the executor never waits on the sends between decode steps (as TensorRT-LLM's executor hands
its responses to a response thread). A request carrying only `cancel_key` cancels the request sent
with that `request_key`,
which leaves the batch at the next step. An error (a cancelled request's too) is the final
response's `error` output, not a Triton error response: a BLS caller never receives the latter
from a decoupled model (docs/triton-python-backend.md).
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time

import numpy as np

from videoneva.config import normalize_precision
from videoneva.errors import VideoNevaError
from videoneva.runtime.engine import ExecutorOptions, load_llm, load_tokenizer
from videoneva.runtime.engine_dir import EngineDir
from videoneva.schema import SamplingSettings
from videoneva.serving.tensors import Tensors, json_of, json_tensor, scalar_of, string_tensor, text_of

INPUTS = {"input_ids": ("TYPE_INT32", [-1]), "prompt_embedding_table": ("TYPE_FP32", [-1, -1]),
          "sampling": ("TYPE_STRING", [1]), "streaming": ("TYPE_BOOL", [1]), "request_key": ("TYPE_STRING", [1]),
          "cancel_key": ("TYPE_STRING", [1]), "media_key": ("TYPE_STRING", [1])}
OUTPUTS = {"output_ids": ("TYPE_INT32", [-1]), "output_log_probs": ("TYPE_FP32", [-1]),
           "finish_reason": ("TYPE_STRING", [1]), "error": ("TYPE_STRING", [1])}
DECOUPLED = True
PROGRESS_INTERVAL_S = 0.1
METRICS = {"active_sequences": "GAUGE", "queued_requests": "GAUGE", "steps": "COUNTER", "step_sequences": "COUNTER",
           "prefills": "COUNTER", "prefix_hits": "COUNTER", "cancelled": "COUNTER", "kv_tokens_used": "GAUGE", "kv_tokens_free": "GAUGE"}


def sampling_tensor(s: SamplingSettings) -> np.ndarray:
    return json_tensor(dataclasses.asdict(s))


class LLMModel:
    """Hands each request to the LLM's executor (`submit`) and routes its tokens back to it.

    Args:
        llm: a LanguageModel with submit(ids, table, sampling, on_token, on_done) -> handle.
    """

    def __init__(self, llm, stream_interval_s: float = 0.0):
        self.llm, self.stream_interval_s = llm, stream_interval_s
        self._running: dict[str, object] = {}   # request_key → handle, for cancel_key
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # (send, payload, handle box), in order
        threading.Thread(target=self._respond, name="videoneva-llm-responder", daemon=True).start()

    def _respond(self) -> None:
        """Send what the executor produced; a streamed piece that cannot be sent (the caller is
        gone) cancels its request, which then leaves the batch."""
        while True:
            send, payload, box = self._outbox.get()
            try:
                send(payload)
            except Exception:  # noqa: BLE001  one request's failed send never stops the others'
                if box and box[0] is not None:
                    box[0].cancel()

    def start(self, inputs: Tensors, call, finish) -> None:
        """Queue the request; finish(outputs | exception) is called when it ends (from the response thread)."""
        import torch

        cancel = text_of(inputs.get("cancel_key"), "cancel_key")
        if cancel is not None:
            with self._lock:
                handle = self._running.get(cancel)
            if handle is not None:
                handle.cancel()
            finish({"output_ids": np.zeros(0, np.int32), "output_log_probs": np.zeros(0, np.float32),
                    "finish_reason": string_tensor("cancelled" if handle is not None else "unknown")})
            return
        if "input_ids" not in inputs or "sampling" not in inputs:
            raise VideoNevaError("llm: input_ids and sampling are required (or cancel_key alone)")
        ids = [int(i) for i in np.asarray(inputs["input_ids"]).reshape(-1)]
        table = inputs.get("prompt_embedding_table")
        table = None if table is None or table.size == 0 else torch.from_numpy(np.asarray(table, np.float32))
        sampling = SamplingSettings(**json_of(inputs["sampling"], "sampling"))
        streaming = bool(scalar_of(inputs.get("streaming"), "streaming") or False)
        interval = self.stream_interval_s if streaming else PROGRESS_INTERVAL_S
        key = text_of(inputs.get("request_key"), "request_key")
        pending: list[int] = []
        last = [0.0 if streaming else time.monotonic()]  # a stream's first id goes out at once
        box: list = [None]  # the handle, once submitted

        def on_token(tid: int) -> None:
            pending.append(tid)
            now = time.monotonic()
            if now - last[0] >= interval:
                self._outbox.put((call.send, {"output_ids": np.asarray(pending, np.int32)}, box))
                pending.clear()
                last[0] = now

        def on_done(out, error) -> None:
            if key is not None:
                with self._lock:
                    self._running.pop(key, None)
            result = error if error is not None else {
                "output_ids": np.asarray(out.token_ids, np.int32),
                "output_log_probs": np.asarray(out.logprobs or [], np.float32),
                "finish_reason": string_tensor(out.finish_reason)}
            self._outbox.put((finish, result, None))

        handle = self.llm.submit(ids, table, sampling, on_token, on_done,
                                 media_key=text_of(inputs.get("media_key"), "media_key"))
        box[0] = handle
        if key is not None:
            with self._lock:  # on_done pops under the same lock: a request already ended is not kept
                if not handle.done:
                    self._running[key] = handle

    def __call__(self, inputs: Tensors, call) -> Tensors:
        """start() and wait: the same request answered in this thread (tests, one-off use)."""
        box, done = {}, threading.Event()

        def finish(out) -> None:
            box["out"] = out
            done.set()

        self.start(inputs, call, finish)
        done.wait()
        if isinstance(box["out"], BaseException):
            raise box["out"]
        return box["out"]

    def metrics(self) -> dict[str, tuple[str, int, str]]:
        """videoneva_llm_*: the executor's batch, queue and KV figures, for Triton's metrics endpoint."""
        figures = self.llm.figures()
        return {f"videoneva_llm_{k}" + ("_total" if kind == "COUNTER" else ""): (kind, int(figures.get(k, 0)),
                                                                                    f"LLM executor: {k.replace('_', ' ')}")
                for k, kind in METRICS.items()}


def make(params: dict[str, str], bls=None) -> LLMModel:
    threads = int(params.get("threads") or 0)
    if threads:
        import torch

        torch.set_num_threads(threads)  # the ONNX Runtime LLM takes as many intra-op threads
    eng = EngineDir.read(params["engine_dir"])
    _, backend = eng.backends(params.get("device", "auto"))
    return LLMModel(load_llm(eng, backend, load_tokenizer(eng), normalize_precision(params.get("precision", "32")),
                             executor=ExecutorOptions.from_params(params), device=params.get("device", "auto")),
                    float(params.get("stream_interval_ms") or 0) / 1000)
