"""The Triton python-backend side of each model in triton_repo/ (model.py files only delegate here).

Runs inside the python backend's stub, where `triton_python_backend_utils` is importable. The
work itself is in stages.py; this module converts tensors, sends responses and errors, makes BLS
calls, and exports the feature-cache counters as Triton custom metrics.
"""
from __future__ import annotations

import json
import logging
import traceback
from typing import Iterator

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


def answer_each(requests, fn) -> list:
    """Non-decoupled models: one response per request, an error response for a request that fails."""
    out = []
    for request in requests:
        try:
            out.append(response(fn(request)))
        except Exception as exc:  # noqa: BLE001  one bad request never fails the others
            out.append(pb_utils.InferenceResponse(output_tensors=[], error=error_of(exc)))
    return out


def _front(params: dict):
    return stages.load_front(json.loads(params["pipeline_args"]))


def _threads(params: dict) -> None:
    n = int(params.get("torch_threads", "0") or 0)
    if n > 0:
        import torch

        torch.set_num_threads(n)


class PreprocessModel:
    def __init__(self, args: dict):
        params = params_of(args)
        _threads(params)
        _, self.front = _front(params)

    def execute(self, requests):
        return answer_each(requests, lambda r: stages.preprocess(self.front, inputs_of(r, stages.PREPROCESS_IN)))


class PostprocessModel:
    def __init__(self, args: dict):
        _, self.front = _front(params_of(args))

    def execute(self, requests):
        return answer_each(requests, lambda r: stages.postprocess(self.front, inputs_of(r, stages.POSTPROCESS_IN)))


class VisionModel:
    """Frames of all requests in a dynamic batch go through the encoder in one call."""

    def __init__(self, args: dict):
        params = params_of(args)
        _threads(params)
        from pathlib import Path

        from videoneva.config import InferConfig, load_config
        from videoneva.runtime.engine import load_vision, read_engine_dir, select_backends

        cfg = load_config(InferConfig, json.loads(params["pipeline_args"]))
        d = Path(cfg.engine_dir)
        manifest, media = read_engine_dir(d)
        backend, _ = select_backends(manifest, cfg.device)  # ONNX Runtime on CPU, the TensorRT plan on GPU
        self.encoder = load_vision(d, manifest, media, backend)

    def execute(self, requests):
        try:
            pixels = [pb_utils.get_input_tensor_by_name(r, "pixel_values").as_numpy() for r in requests]
            feats = stages.encode_batches(self.encoder, pixels)
            return [response({"features": f}) for f in feats]
        except Exception as exc:  # noqa: BLE001
            err = error_of(exc)
            return [pb_utils.InferenceResponse(output_tensors=[], error=err) for _ in requests]


class LLMModel:
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
        self.llm = load_llm(d, manifest, media, backend, tok, cfg.trainer.precision)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = inputs_of(request, stages.LLM_IN)
                stream = bool(inputs.get("streaming", np.array([False])).reshape(-1)[0])
                on_token = None
                if stream:
                    def on_token(tid: int) -> None:
                        sender.send(response({"output_ids": np.array([tid], np.int32)}))
                final = stages.generate(self.llm, inputs, on_token)
                sender.send(response(final), flags=FINAL)
            except Exception as exc:  # noqa: BLE001
                sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error_of(exc)), flags=FINAL)
        return None


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


def bls_stream(model: str, tensors: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    responses = pb_utils.InferenceRequest(model_name=model, inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in tensors.items()],
                                          requested_output_names=[]).exec(decoupled=True)
    for resp in responses:
        _raise_for(model, resp)
        out = _tensors_of(resp)
        if out:  # the stream ends with an empty, final-flagged response
            yield out


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


class FeatureCacheModel:
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

    def _one(self, request) -> dict[str, np.ndarray]:
        import torch

        t = inputs_of(request, stages.CACHE_IN)
        key = stages.text_of(t["key"])
        if "features" in t:
            self.cache.put(key, torch.from_numpy(t["features"]), json.loads(stages.text_of(t["meta"])))
            return {"found": np.array([True]), "features": np.zeros((0, 0), np.float32), "meta": stages.json_tensor({})}
        hit = self.cache.get(key)
        if hit is None:
            return {"found": np.array([False]), "features": np.zeros((0, 0), np.float32), "meta": stages.json_tensor({})}
        return {"found": np.array([True]), "features": hit[0].numpy(), "meta": stages.json_tensor(hit[1])}

    def execute(self, requests):
        out = answer_each(requests, self._one)
        s = self.cache.stats
        if self.metrics is not None:
            self.metrics.update(s)
        pb_utils.Logger.log_verbose(f"videoneva feature cache: hits={s.hits} misses={s.misses} "
                                    f"evictions={s.evictions} entries={s.entries} bytes={s.bytes}")
        return out


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


class VideoNevaModel:
    """The entry point (BLS, decoupled). Each instance answers its requests one at a time with
    synchronous BLS calls (calls from several threads of one stub crashed the wheel's python
    backend stub); `videoneva_instances` instances answer requests concurrently."""

    def __init__(self, args: dict):
        params = params_of(args)
        cfg, front = _front(params)
        self.limits = ServerLimits(max_tokens=int(params["max_tokens"]), max_media_bytes=int(params["max_media_bytes"]))
        cache = BLSCache() if int(params["cache_bytes"]) > 0 else None  # 0: no cache, no lookups
        self.orchestrator = stages.Orchestrator(front, cache, stages.default_sampling(cfg, front),
                                                server_media_root=bool(cfg.inference.media_base_path))
        self.model_id = front.settings.model_id

    def execute(self, requests):
        for request in requests:
            # Triton itself refuses unknown, missing or mistyped inputs before they reach us
            self._answer(inputs_of(request, INPUTS), request.get_response_sender())
        return None

    def _answer(self, inputs, sender) -> None:
        try:
            req = parse_request(inputs, self.limits)
            on_delta = None
            if req.stream:
                def on_delta(d: stages.Delta) -> None:
                    sender.send(response({"text_output": string_tensor(d.text), "output_ids": np.asarray(d.token_ids, np.int32)}))
            result = self.orchestrator.answer(req, bls_call, bls_stream, on_delta)
            result["model_id"] = self.model_id
            sender.send(response({"text_output": string_tensor(result["clean_response"]),
                                  "output_ids": np.asarray(result["token_ids"], np.int32),
                                  "result_json": string_tensor(json.dumps(result, ensure_ascii=False))}), flags=FINAL)
        except Exception as exc:  # noqa: BLE001  one bad request never fails the others
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error_of(exc)), flags=FINAL)
