"""The python-backend side of every model in triton_repo/: one TritonPythonModel runs any handler.

Each model's `1/model.py` is the same bootstrap (triton_repo/model.py), which imports this class;
config.pbtxt's `handler` parameter names the module under videoneva/serving/models/ that does
the work. This module converts tensors, sends responses and errors, makes BLS calls and exports
a handler's counters as Triton custom metrics; it only runs inside the python backend's stub,
where `triton_python_backend_utils` is importable.

execute() only copies its requests' inputs and queues them for the instance's one worker thread,
which runs the handler and answers through each request's response sender. While the server
waits for execute() to return, the python backend checks once a second that the stub's health
thread has run; a stub that stalls for about a second (CPU starvation, a paused VM) is then
declared "not healthy", and that instance stays broken (docs/triton-python-backend.md). Returning
at once narrows that window from a whole generation to a copy.
"""
from __future__ import annotations

import importlib
import json
import queue
import threading
import traceback
from typing import Callable, Iterator

import numpy as np
import triton_python_backend_utils as pb_utils

from videoneva.errors import VideoNevaError

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
INTERNAL = "internal error: "


class StageError(VideoNevaError):
    """A model called through BLS answered with an error caused by the request; its message is passed on."""


def error_of(exc: BaseException) -> "pb_utils.TritonError":
    """INVALID_ARG for bad input (VideoNevaError), INTERNAL (with the traceback logged) otherwise."""
    if isinstance(exc, VideoNevaError):
        msg, code = str(exc), "INVALID_ARG"
    else:
        pb_utils.Logger.log_error("videoneva: internal error\n" + "".join(traceback.format_exception(exc)))
        msg, code = f"{INTERNAL}{type(exc).__name__}: {exc}", "INTERNAL"
    return pb_utils.TritonError(msg, getattr(pb_utils.TritonError, code))


def error_output(exc: BaseException) -> dict[str, np.ndarray]:
    """An error as an `error` output on the final response (error_of's message).

    An error response from a decoupled model never reaches the response iterator of a model that
    called it through BLS (Triton 2.51): the caller would wait for ever. So the models other models
    stream from (handlers with start(): the llm) answer every error this way, and
    TritonBLS.stream raises it as _raise_for would.
    """
    return {"error": np.array([error_of(exc).message().encode()], dtype=object)}


def response(tensors: dict[str, np.ndarray]) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, np.ascontiguousarray(v))
                                                     for k, v in tensors.items()])


def send_final(sender, resp) -> None:
    """The request's last response; a request the client has cancelled meanwhile is only logged."""
    try:
        sender.send(resp, flags=FINAL)
    except Exception as exc:  # noqa: BLE001  the worker goes on with the next request
        pb_utils.Logger.log_warn(f"videoneva: could not send a response ({type(exc).__name__}: {exc})")


class Call:
    """What a handler sees of its request: send() a streamed response, cancelled().

    A handler with `start(inputs, call, finish)` instead of `__call__` answers later from any
    thread: finish(outputs) or finish(exception) sends the final response (the llm model's
    in-flight batcher does so).
    """

    def __init__(self, sender):
        self.sender = sender

    def send(self, tensors: dict[str, np.ndarray]) -> None:
        self.sender.send(response(tensors))

    def cancelled(self) -> bool:
        return self.sender.is_cancelled()


def _tensors_of(resp) -> dict[str, np.ndarray]:
    return {t.name(): t.as_numpy() for t in resp.output_tensors()}


def _raise_for(model: str, resp) -> None:
    """A called model's error: StageError (bad input, INVALID_ARG) or RuntimeError (anything else)."""
    if resp.has_error():
        _raise_message(model, resp.error().message())


def _raise_message(model: str, msg: str) -> None:
    if msg.startswith(INTERNAL):  # error_of's mark; the code itself does not survive BLS here
        raise RuntimeError(f"{model}: {msg}")
    raise StageError(f"{model}: {msg}")


def _request(model: str, tensors: dict[str, np.ndarray]) -> "pb_utils.InferenceRequest":
    return pb_utils.InferenceRequest(model_name=model, requested_output_names=[],
                                     inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in tensors.items()])


class TritonBLS:
    """Calls to the other models of the server (business logic scripting), from any worker thread."""

    def __init__(self):
        # Response iterators of finished decoupled calls, kept until the stub has dropped its own
        # reference (see stream), per calling thread.
        self._local = threading.local()

    def call(self, model: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        resp = _request(model, tensors).exec()
        _raise_for(model, resp)
        return _tensors_of(resp)

    def stream(self, model: str, tensors: dict[str, np.ndarray], barrier: Callable[[], bool]) -> Iterator[dict]:
        """A decoupled model's responses, each copied out of the stub's shared memory.

        The stub keeps each call's response iterator in a map that a thread without the GIL clears
        once the last response has come; if Python has already let go of the iterator, the
        responses' arrays are freed there without the GIL, which corrupts the stub's heap under
        streaming load. So the iterator is read to its last response and held until barrier() has
        made a round trip through the same queue as that cleanup (True: it did).
        """
        responses = _request(model, tensors).exec(decoupled=True)
        try:
            for resp in responses:
                _raise_for(model, resp)
                out = {k: np.array(v, copy=True) for k, v in _tensors_of(resp).items()}
                resp = None
                if "error" in out:  # a decoupled model's error (error_output)
                    _raise_message(model, out["error"].reshape(-1)[0].decode())
                if out:  # the stream ends with an empty, final-flagged response
                    yield out
        finally:
            resp = None
            for _ in responses:  # to the last response: then the stub queues its cleanup
                pass
            held = self._local.__dict__.setdefault("held", [])
            held.append(responses)
            responses = None
            if barrier():
                held.clear()


class Worker:
    """The instance's worker threads: run queued jobs after execute() has returned.

    One thread (the default) runs them in order; `threads` > 1 answer that many requests of the
    instance at once (the entry model, whose requests mostly wait on the other models).
    """

    def __init__(self, name: str, threads: int = 1):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._run, name=f"videoneva-{name}-{i}", daemon=True)
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # noqa: BLE001  a job sends its own error responses; this is a bug
                pb_utils.Logger.log_error(f"videoneva: worker job failed\n{traceback.format_exc()}")

    def stop(self, timeout: float = 30.0) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join(timeout)


class Metrics:
    """A handler's metrics() (name → (kind, value, description)) as Triton custom metrics.

    update() runs in whichever thread ends a request (the llm's executor and worker threads both
    do): one at a time, or two would add the same counter step.
    """

    def __init__(self, handler, model_name: str):
        self.handler, self.families, self.metrics, self.last = handler, [], {}, {}
        for name, (kind, _, description) in handler.metrics().items():
            family = pb_utils.MetricFamily(name=name, description=description, kind=getattr(pb_utils.MetricFamily, kind))
            self.families.append(family)  # a family must outlive its metrics
            self.metrics[name] = (kind, family.Metric(labels={"model": model_name}))
            self.last[name] = 0
        self._lock = threading.Lock()

    def update(self) -> None:
        with self._lock:
            self._update()

    def _update(self) -> None:
        for name, (kind, value, _) in self.handler.metrics().items():
            k, metric = self.metrics[name]
            if k == "COUNTER":
                if value > self.last[name]:
                    metric.increment(value - self.last[name])
            else:
                metric.set(value)
            self.last[name] = value


class TritonPythonModel:
    """Runs the handler that config.pbtxt's `handler` parameter names (see videoneva/serving/models)."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        params.setdefault("max_batch_size", str(config.get("max_batch_size", 0)))
        module = importlib.import_module(params["handler"])
        self.names = list(module.INPUTS)
        self.handler = module.make(params, TritonBLS())
        self.worker = Worker(args.get("model_instance_name") or args["model_name"],
                             int(params.get("concurrency") or 1))
        self.metrics = None
        if hasattr(self.handler, "metrics"):
            try:
                self.metrics = Metrics(self.handler, args["model_name"])
            except Exception as exc:  # noqa: BLE001  custom metrics are optional: keep serving
                pb_utils.Logger.log_warn(f"videoneva: custom metrics unavailable ({exc})")
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # (inputs, sender) for batch handlers

    def _inputs(self, request) -> dict[str, np.ndarray]:
        """Copies: as_numpy() views shared memory that is reused once execute() returns."""
        out = {}
        for name in self.names:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is not None:
                out[name] = np.array(t.as_numpy(), copy=True)
        return out

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = self._inputs(request)
            except Exception as exc:  # noqa: BLE001  one unreadable request never fails the others
                send_final(sender, response(error_output(exc)) if hasattr(self.handler, "start") else
                           pb_utils.InferenceResponse(output_tensors=[], error=error_of(exc)))
                continue
            if hasattr(self.handler, "batch"):
                self.inbox.put((inputs, sender))
            elif hasattr(self.handler, "start"):
                self.worker.submit(lambda inputs=inputs, sender=sender: self._start(inputs, sender))
            else:
                self.worker.submit(lambda inputs=inputs, sender=sender: self._one(inputs, sender))
        if hasattr(self.handler, "batch"):
            self.worker.submit(self._drain)
        return None

    def _one(self, inputs: dict, sender) -> None:
        try:
            resp = response(self.handler(inputs, Call(sender)))
        except Exception as exc:  # noqa: BLE001  one bad request never fails the others
            resp = pb_utils.InferenceResponse(output_tensors=[], error=error_of(exc))
        self._finish(sender, resp)

    def _start(self, inputs: dict, sender) -> None:
        def finish(out) -> None:
            self._finish(sender, response(error_output(out) if isinstance(out, BaseException) else out))
        try:
            self.handler.start(inputs, Call(sender), finish)
        except Exception as exc:  # noqa: BLE001  refused before it started
            finish(exc)

    def _drain(self) -> None:
        """Every request queued so far, in one handler.batch call (a later _drain may find none)."""
        items = []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        if not items:
            return
        try:
            results = self.handler.batch([inputs for inputs, _ in items])
        except Exception as exc:  # noqa: BLE001
            results = [exc] * len(items)
        for (_, sender), out in zip(items, results):
            resp = (pb_utils.InferenceResponse(output_tensors=[], error=error_of(out))
                    if isinstance(out, BaseException) else response(out))
            self._finish(sender, resp)

    def _finish(self, sender, resp) -> None:
        send_final(sender, resp)
        if self.metrics is not None:
            self.metrics.update()

    def finalize(self) -> None:
        self.worker.stop()
