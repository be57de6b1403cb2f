"""The Triton python-backend side of each model in triton_repo/ (model.py files only delegate here).

Runs inside the python backend's stub, where `triton_python_backend_utils` is importable. The
work itself is in stages.py; this module converts tensors, sends responses and errors, makes BLS
calls, and exports the feature-cache counters as Triton custom metrics.

Every model's execute() only copies its requests' inputs and queues them for the instance's one
worker thread, which does the work and answers through each request's response sender. While the
server waits for execute() to return, the python backend checks once a second that the stub's
health thread has run; a stub that stalls for about a second (CPU starvation, a paused VM) is then
declared "not healthy", and that instance stays broken or the server crashes (../shared/reference/FINDINGS.md).
Returning at once narrows that window from a whole generation to a copy; a stall that overlaps an
execute() call (a request handed to a stub while it is stalled) is still fatal to that instance.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import traceback
from typing import Callable, Iterator

import numpy as np
import triton_python_backend_utils as pb_utils

from videoneva.errors import VideoNevaError
from videoneva.serving import stages
from videoneva.serving.protocol import INPUTS, ServerLimits, encode_text, parse_request, string_tensor

log = logging.getLogger("videoneva.triton")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
INTERNAL = "internal error: "


class StageError(VideoNevaError):
    """A model called through BLS answered with an error; its message is passed on unchanged."""


def params_of(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def error_of(exc: BaseException) -> "pb_utils.TritonError":
    """INVALID_ARG for bad input (VideoNevaError), INTERNAL (with the traceback logged) otherwise."""
    if isinstance(exc, VideoNevaError):
        msg, code = str(exc), "INVALID_ARG"
    else:
        pb_utils.Logger.log_error(f"videoneva: internal error\n{traceback.format_exc()}")
        msg, code = f"{INTERNAL}{type(exc).__name__}: {exc}", "INTERNAL"
    try:
        return pb_utils.TritonError(msg, getattr(pb_utils.TritonError, code))
    except (AttributeError, TypeError):  # older python backends: message only
        return pb_utils.TritonError(msg)


def inputs_of(request, names) -> dict[str, np.ndarray]:
    """Copies: as_numpy() views shared memory that is reused once execute() returns."""
    out = {}
    for name in names:
        t = pb_utils.get_input_tensor_by_name(request, name)
        if t is not None:
            out[name] = np.array(t.as_numpy(), copy=True)
    return out


def response(tensors: dict[str, np.ndarray]) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in tensors.items()])


def error_response(exc: BaseException) -> "pb_utils.InferenceResponse":
    return pb_utils.InferenceResponse(output_tensors=[], error=error_of(exc))


def send_final(sender, resp) -> None:
    """The request's last response; a request the client has cancelled meanwhile is only logged."""
    try:
        sender.send(resp, flags=FINAL)
    except Exception as exc:  # noqa: BLE001  the worker goes on with the next request
        pb_utils.Logger.log_warn(f"videoneva: could not send a response ({type(exc).__name__}: {exc})")


class Worker:
    """The instance's one worker thread: runs queued jobs in order, after execute() has returned.

    One thread, so an instance does one thing at a time, as when it worked inside execute();
    instances give concurrency.
    """

    def __init__(self, name: str):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"videoneva-{name}", daemon=True)
        self.thread.start()

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
        self.jobs.put(None)
        self.thread.join(timeout)


def queue_each(worker: Worker, requests, names, handle: Callable[[dict, object], None]) -> None:
    """Copy each request's inputs now (they are freed when execute() returns) and queue
    handle(inputs, sender) for the worker; a request whose inputs cannot be read is answered with
    its error at once, never failing the others."""
    for request in requests:
        sender = request.get_response_sender()
        try:
            inputs = inputs_of(request, names)
        except Exception as exc:  # noqa: BLE001
            send_final(sender, error_response(exc))
            continue
        worker.submit(lambda inputs=inputs, sender=sender: handle(inputs, sender))
    return None


def answer_each(worker: Worker, requests, names, compute: Callable[[dict], dict]) -> None:
    """Default-mode models: each request gets exactly one final response, compute(inputs)'s
    tensors or the error it raised, sent by the worker."""
    def handle(inputs, sender) -> None:
        try:
            resp = response(compute(inputs))
        except Exception as exc:  # noqa: BLE001  one bad request never fails the others
            resp = error_response(exc)
        send_final(sender, resp)

    return queue_each(worker, requests, names, handle)


def _front(params: dict):
    return stages.load_front(json.loads(params["pipeline_args"]))


def _threads(params: dict) -> None:
    n = int(params.get("torch_threads", "0") or 0)
    if n > 0:
        import torch

        torch.set_num_threads(n)


class _Model:
    """A model with a worker thread (see the module docstring); finalize() stops it."""

    def __init__(self, args: dict):
        self.worker = Worker(args.get("model_instance_name") or args.get("model_name") or "model")

    def finalize(self) -> None:
        self.worker.stop()


class PreprocessModel(_Model):
    def __init__(self, args: dict):
        params = params_of(args)
        _threads(params)
        _, self.front = _front(params)
        super().__init__(args)

    def execute(self, requests):
        return answer_each(self.worker, requests, stages.PREPROCESS_IN, lambda t: stages.preprocess(self.front, t))


class PostprocessModel(_Model):
    def __init__(self, args: dict):
        _, self.front = _front(params_of(args))
        super().__init__(args)

    def execute(self, requests):
        return answer_each(self.worker, requests, stages.POSTPROCESS_IN, lambda t: stages.postprocess(self.front, t))


class VisionModel(_Model):
    """Frames of all requests queued at the worker go through the encoder in one call (at most the
    config's max_batch_size frames): the dynamic batch of one execute() plus those queued behind it."""

    def __init__(self, args: dict):
        params = params_of(args)
        _threads(params)
        self.max_frames = int(json.loads(args["model_config"]).get("max_batch_size", 0) or 0)
        from pathlib import Path

        from videoneva.config import InferConfig, load_config
        from videoneva.runtime.engine import load_vision, read_engine_dir, select_backends

        cfg = load_config(InferConfig, json.loads(params["pipeline_args"]))
        d = Path(cfg.engine_dir)
        manifest, media = read_engine_dir(d)
        backend, _ = select_backends(manifest, cfg.device)  # ONNX Runtime on CPU, the TensorRT plan on GPU
        self.encoder = load_vision(d, manifest, media, backend)
        super().__init__(args)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # (pixels, sender), filled by execute()

    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            try:
                self.inbox.put((inputs_of(r, ["pixel_values"])["pixel_values"], sender))
            except Exception as exc:  # noqa: BLE001
                send_final(sender, error_response(exc))
        self.worker.submit(self._drain)
        return None

    def _drain(self) -> None:
        """Worker: encode everything in the inbox, in calls of at most max_frames frames. The
        inbox holds this execute()'s batch and those queued meanwhile; a later _drain finds it empty."""
        items = []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        while items:
            batch, frames = [], 0
            while items and (not batch or not self.max_frames or frames + items[0][0].shape[0] <= self.max_frames):
                frames += items[0][0].shape[0]
                batch.append(items.pop(0))
            try:
                feats = stages.encode_batches(self.encoder, [p for p, _ in batch])
                resps = [response({"features": f}) for f in feats]
            except Exception as exc:  # noqa: BLE001
                resps = [error_response(exc)] * len(batch)
            for (_, sender), resp in zip(batch, resps):
                send_final(sender, resp)


class LLMModel(_Model):
    """Decoupled: with streaming, one response per generated token id, then the final one."""

    def __init__(self, args: dict):
        params = params_of(args)
        _threads(params)
        from pathlib import Path

        from videoneva.runtime.engine import engine_settings, load_llm, select_backends

        cfg, _ = _front(params)
        d = Path(cfg.engine_dir)
        manifest, media, _, tok, _ = engine_settings(d, cfg)
        _, backend = select_backends(manifest, cfg.device)  # ONNX Runtime or torch on CPU, TensorRT-LLM on GPU
        self.llm = load_llm(d, manifest, media, backend, tok, cfg.trainer.precision, cfg.device)
        super().__init__(args)

    def execute(self, requests):
        return queue_each(self.worker, requests, stages.LLM_IN, self._generate)

    def _generate(self, inputs: dict[str, np.ndarray], sender) -> None:
        try:
            stream = bool(inputs.get("streaming", np.array([False])).reshape(-1)[0])
            on_token = None
            if stream:
                def on_token(tid: int) -> None:
                    sender.send(response({"output_ids": np.array([tid], np.int32)}))
            resp = response(stages.generate(self.llm, inputs, on_token))
        except Exception as exc:  # noqa: BLE001
            resp = error_response(exc)
        send_final(sender, resp)


def _tensors_of(resp) -> dict[str, np.ndarray]:
    return {t.name(): t.as_numpy() for t in resp.output_tensors()}


def _raise_for(model: str, resp) -> None:
    """A called model's error: StageError (bad input, INVALID_ARG) or RuntimeError (anything else)."""
    if not resp.has_error():
        return
    msg = resp.error().message()
    if msg.startswith(INTERNAL):  # error_of's mark; the code itself does not survive BLS here
        raise RuntimeError(f"{model}: {msg}")
    raise StageError(f"{model}: {msg}")


def bls_call(model: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    resp = pb_utils.InferenceRequest(model_name=model, inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in tensors.items()],
                                     requested_output_names=[]).exec()
    _raise_for(model, resp)
    return _tensors_of(resp)


# Response iterators of finished decoupled BLS calls, kept until the stub has dropped its own
# reference (see bls_stream). Only the `videoneva` model's worker thread touches it.
_HELD: list = []


def bls_stream(model: str, tensors: dict[str, np.ndarray], barrier: Callable[[], bool]) -> Iterator[dict[str, np.ndarray]]:
    """A decoupled model's responses, each copied out of the stub's shared memory.

    The stub keeps each call's response iterator in a map that a thread without the GIL clears
    once the last response has come (its cleanup message); if Python has already let go of the
    iterator, the responses' numpy arrays are freed there without the GIL, which corrupted the
    stub's heap under streaming load (../shared/reference/FINDINGS.md). So the iterator is read to its last
    response and held until barrier() has made a round trip through the same queue as the cleanup
    (True: it did); the last references then go here, with the GIL.
    """
    responses = pb_utils.InferenceRequest(model_name=model, inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in tensors.items()],
                                          requested_output_names=[]).exec(decoupled=True)
    try:
        for resp in responses:
            _raise_for(model, resp)
            out = {k: np.array(v, copy=True) for k, v in _tensors_of(resp).items()}
            resp = None
            if out:  # the stream ends with an empty, final-flagged response
                yield out
    finally:
        resp = None
        for _ in responses:  # to the last response: then the stub queues its cleanup
            pass
        _HELD.append(responses)
        responses = None
        if barrier():
            _HELD.clear()


class _CacheMetrics:
    """Triton custom metrics mirroring FeatureCache.stats (counters for totals, gauges for sizes)."""

    KINDS = {"hits": "COUNTER", "misses": "COUNTER", "evictions": "COUNTER", "entries": "GAUGE", "bytes": "GAUGE"}

    def __init__(self, model_name: str):
        self.families, self.metrics, self.last = [], {}, {}
        for key, kind in self.KINDS.items():
            name = f"videoneva_feature_cache_{key}" + ("_total" if kind == "COUNTER" else "")
            family = pb_utils.MetricFamily(name=name, description=f"visual feature cache {key}",
                                           kind=getattr(pb_utils.MetricFamily, kind))
            self.families.append(family)  # a family must outlive its metrics
            self.metrics[key] = (kind, family.Metric(labels={"model": model_name}))
            self.last[key] = 0

    def update(self, stats) -> None:
        for key, (kind, metric) in self.metrics.items():
            value = int(getattr(stats, key))
            if kind == "COUNTER":
                if value > self.last[key]:
                    metric.increment(value - self.last[key])
            else:
                metric.set(value)
            self.last[key] = value


class FeatureCacheModel(_Model):
    """One instance holds the visual feature cache for every `videoneva` instance.

    A request with `features` stores them under `key`; a request without looks `key` up.
    """

    def __init__(self, args: dict):
        from videoneva.runtime.cache import FeatureCache

        self.cache = FeatureCache(int(params_of(args)["cache_bytes"]))
        try:
            self.metrics = _CacheMetrics(args["model_name"])
        except Exception as exc:  # noqa: BLE001  custom metrics are optional: keep serving, log them
            log.warning("custom metrics unavailable (%s); feature-cache stats go to the log only", exc)
            self.metrics = None
        super().__init__(args)

    def _one(self, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        key = stages.text_of(t["key"])
        if "features" in t:
            self.cache.put(key, torch.from_numpy(t["features"]), json.loads(stages.text_of(t["meta"])))
            out = {"found": np.array([True]), "features": np.zeros((0, 0), np.float32), "meta": stages.json_tensor({})}
        else:
            hit = self.cache.get(key)
            out = {"found": np.array([hit is not None]),
                   "features": np.zeros((0, 0), np.float32) if hit is None else hit[0].numpy(),
                   "meta": stages.json_tensor({} if hit is None else hit[1])}
        s = self.cache.stats
        if self.metrics is not None:
            self.metrics.update(s)
        pb_utils.Logger.log_verbose(f"videoneva feature cache: hits={s.hits} misses={s.misses} "
                                    f"evictions={s.evictions} entries={s.entries} bytes={s.bytes}")
        return out

    def execute(self, requests):
        return answer_each(self.worker, requests, stages.CACHE_IN, self._one)


class BLSCache:
    """The Orchestrator's cache, kept in the `feature_cache` model (shared by all instances)."""

    def get(self, key: str):
        import torch

        out = bls_call("feature_cache", {"key": encode_text(key)})
        if not bool(out["found"].reshape(-1)[0]):
            return None
        return torch.from_numpy(out["features"]), json.loads(stages.text_of(out["meta"]))

    def put(self, key: str, features, meta: dict) -> None:
        bls_call("feature_cache", {"key": encode_text(key), "features": np.ascontiguousarray(features.numpy()),
                                   "meta": stages.json_tensor(meta)})


class VideoNevaModel(_Model):
    """The entry point (BLS, decoupled). Each instance answers its requests one at a time, on its
    worker thread with synchronous BLS calls; `videoneva_instances` instances answer concurrently."""

    def __init__(self, args: dict):
        params = params_of(args)
        cfg, front = _front(params)
        self.limits = ServerLimits(max_tokens=int(params["max_tokens"]), max_media_bytes=int(params["max_media_bytes"]))
        cache = BLSCache() if int(params["cache_bytes"]) > 0 else None  # 0: no cache, no lookups
        self.orchestrator = stages.Orchestrator(front, cache, stages.default_sampling(cfg, front),
                                                server_media_root=bool(cfg.inference.media_base_path))
        self.model_id = front.settings.model_id
        super().__init__(args)

    def execute(self, requests):
        # Triton itself refuses unknown, missing or mistyped inputs before they reach us
        return queue_each(self.worker, requests, INPUTS, self._answer)

    def _answer(self, inputs, sender) -> None:
        try:
            req = parse_request(inputs, self.limits)
            on_delta = None
            if req.stream:
                def on_delta(d: stages.Delta) -> None:
                    sender.send(response({"text_output": string_tensor(d.text), "output_ids": np.asarray(d.token_ids, np.int32)}))
            def stream(model: str, tensors: dict[str, np.ndarray]):
                return bls_stream(model, tensors, barrier=lambda: not sender.is_cancelled())

            result = self.orchestrator.answer(req, bls_call, stream, on_delta)
            result["model_id"] = self.model_id
            resp = response({"text_output": string_tensor(result["clean_response"]),
                             "output_ids": np.asarray(result["token_ids"], np.int32),
                             "result_json": string_tensor(json.dumps(result, ensure_ascii=False))})
        except Exception as exc:  # noqa: BLE001  one bad request never fails the others
            resp = error_response(exc)
        send_final(sender, resp)
