"""What each Triton model of the repository does, over plain numpy tensors (testable without Triton).

    videoneva (BLS, decoupled) ─┬─ preprocess      media decode + frame slicing + CLIP preprocessing,
                                │                   prompt templating + tokenization (Front)
                                ├─ vision_encoder  ONNX Runtime (CPU) / TensorRT plan (GPU), frames
                                │                   batched across requests by Triton's dynamic batcher
                                ├─ llm             torch (decoupled, streams token ids) | tensorrtllm
                                ├─ postprocess     detokenize, end strings, clean response
                                └─ feature_cache   visual features by media content hash (LRU, bytes)

The `videoneva` model looks the media up in the `feature_cache` model (one instance, shared by all
`videoneva` instances) by a key (content hash + sampling settings) computed before anything is
decoded, so a hit skips preprocess's decode and the vision encoder.
Model-to-model tensors are named here; the client-facing ones are in protocol.py.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional

import numpy as np
import torch

from videoneva import prompts
from videoneva.config import InferConfig, load_config
from videoneva.generation import SamplingSettings
from videoneva.runtime.pipeline import Front, Request, media_meta
from videoneva.serving.protocol import MEDIA_NOT_CACHED, ParsedRequest, RequestError, encode_text

# Tensors between the models: name -> (Triton dtype, dims). Text is UTF-8 in UINT8 (protocol.py).
PREPROCESS_IN = {"text_input": ("TYPE_UINT8", [-1]), "media_type": ("TYPE_UINT8", [-1]),
                 "media_bytes_input": ("TYPE_UINT8", [-1]), "media_path": ("TYPE_UINT8", [-1]),
                 "cached_rows": ("TYPE_INT32", [1]), "insert_media_token": ("TYPE_UINT8", [-1])}
PREPROCESS_OUT = {"input_ids": ("TYPE_INT32", [-1]), "pixel_values": ("TYPE_FP32", [-1, 3, -1, -1]),
                  "prompt": ("TYPE_UINT8", [-1]), "media_meta": ("TYPE_UINT8", [-1])}
LLM_IN = {"input_ids": ("TYPE_INT32", [-1]), "prompt_embedding_table": ("TYPE_FP32", [-1, -1]),
          "sampling": ("TYPE_UINT8", [-1]), "streaming": ("TYPE_BOOL", [1])}
LLM_OUT = {"output_ids": ("TYPE_INT32", [-1]), "output_log_probs": ("TYPE_FP32", [-1]),
           "finish_reason": ("TYPE_UINT8", [-1])}
CACHE_IN = {"key": ("TYPE_UINT8", [-1]), "features": ("TYPE_FP32", [-1, -1]), "meta": ("TYPE_UINT8", [-1])}
CACHE_OUT = {"found": ("TYPE_BOOL", [1]), "features": ("TYPE_FP32", [-1, -1]), "meta": ("TYPE_UINT8", [-1])}
POSTPROCESS_IN = {"output_ids": ("TYPE_INT32", [-1]), "end_strings": ("TYPE_UINT8", [-1]),
                  "with_tokens": ("TYPE_BOOL", [1])}
POSTPROCESS_OUT = {"text_output": ("TYPE_UINT8", [-1]), "clean_response": ("TYPE_UINT8", [-1]),
                   "stopped": ("TYPE_BOOL", [1]), "tokens": ("TYPE_UINT8", [-1])}

Tensors = dict[str, np.ndarray]


def text_of(arr: Optional[np.ndarray]) -> Optional[str]:
    return None if arr is None else np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8")


def json_tensor(obj) -> np.ndarray:
    return encode_text(json.dumps(obj, ensure_ascii=False))


def load_front(pipeline_args: list[str]) -> tuple[InferConfig, Front]:
    """The engine directory's weight-free stages, from the InferConfig overrides `serve` rendered."""
    from videoneva.runtime.engine import engine_front

    cfg: InferConfig = load_config(InferConfig, pipeline_args)
    return cfg, engine_front(cfg.engine_dir, cfg)


# -- preprocess ------------------------------------------------------------------------------
def preprocess(front: Front, inputs: Mapping[str, Optional[np.ndarray]]) -> Tensors:
    """Decode + preprocess the media (unless cached_rows says the features are cached) and tokenize.

    Raises MediaError / PromptError (VideoNevaError) for bad media or an over-long prompt.
    """
    req = Request(text_of(inputs.get("text_input")) or "", text_of(inputs.get("media_type")),
                  text_of(inputs.get("media_path")), None, text_of(inputs.get("insert_media_token")))
    raw = inputs.get("media_bytes_input")
    if raw is not None:
        req.media_bytes = np.asarray(raw, dtype=np.uint8).tobytes()
    cached = inputs.get("cached_rows")
    size = front.settings.media.crop_size
    pixels = np.zeros((0, 3, size, size), np.float32)
    meta: dict = {}
    rows = 0
    if req.media_type is not None:
        if cached is not None:
            rows = int(np.asarray(cached).reshape(-1)[0])
        else:
            t0 = time.perf_counter()
            sample = front.decode(req)
            pixels = np.ascontiguousarray(sample.pixel_values, dtype=np.float32)
            meta = {**media_meta(sample), "decode_s": time.perf_counter() - t0}
            rows = pixels.shape[0] * front.settings.image_token_len
    prompt, ids = front.prompt_ids(req, rows)
    return {"input_ids": np.asarray(ids, np.int32), "pixel_values": pixels, "prompt": encode_text(prompt),
            "media_meta": json_tensor(meta)}


# -- vision encoder --------------------------------------------------------------------------
def encode_batches(encoder, batches: list[np.ndarray]) -> list[np.ndarray]:
    """One encoder call for the frames of every request in the batch; features split back per request."""
    sizes = [b.shape[0] for b in batches]
    frames = np.concatenate(batches, axis=0) if len(batches) > 1 else batches[0]
    feats = encoder.encode(frames)  # (sum F, T, D)
    feats = feats.float().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float32)
    return np.split(feats, np.cumsum(sizes)[:-1], axis=0)


# -- llm -------------------------------------------------------------------------------------
def sampling_to_json(s: SamplingSettings) -> np.ndarray:
    return json_tensor(dataclasses.asdict(s))


def sampling_from_json(arr: np.ndarray) -> SamplingSettings:
    return SamplingSettings(**json.loads(text_of(arr)))


def generate(llm, inputs: Mapping[str, Optional[np.ndarray]], on_token: Optional[Callable[[int], None]]) -> Tensors:
    """Run the LanguageModel (torch, ONNX Runtime or TensorRT-LLM) on ids + prompt table; on_token gets each id as it is produced."""
    ids = [int(i) for i in np.asarray(inputs["input_ids"]).reshape(-1)]
    table = inputs.get("prompt_embedding_table")
    table = None if table is None or table.size == 0 else torch.from_numpy(np.asarray(table, np.float32))
    out = llm.generate(ids, table, sampling_from_json(inputs["sampling"]), on_token=on_token)
    return {"output_ids": np.asarray(out.token_ids, np.int32),
            "output_log_probs": np.asarray(out.logprobs or [], np.float32),
            "finish_reason": encode_text(out.finish_reason)}


# -- postprocess -----------------------------------------------------------------------------
def postprocess(front: Front, inputs: Mapping[str, Optional[np.ndarray]]) -> Tensors:
    ids = [int(i) for i in np.asarray(inputs["output_ids"]).reshape(-1)]
    ends = json.loads(text_of(inputs.get("end_strings")) or "[]")
    raw, clean, stopped = front.detokenize(ids, ends)
    with_tokens = inputs.get("with_tokens") is not None and bool(np.asarray(inputs["with_tokens"]).reshape(-1)[0])
    return {"text_output": encode_text(raw), "clean_response": encode_text(clean),
            "stopped": np.array([stopped]), "tokens": json_tensor(front.token_texts(ids) if with_tokens else [])}


# -- the videoneva BLS model -----------------------------------------------------------------
Call = Callable[[str, Tensors], Tensors]                  # one model, one response
StreamCall = Callable[[str, Tensors], Iterator[Tensors]]  # a decoupled model, its responses


@dataclass
class Delta:
    text: str
    token_ids: list[int]


class Orchestrator:
    """Answer one client request by calling the other models (through `call` / `stream_call`).

    Args:
        front: media key, sampling limits and defaults (the same Front preprocess uses).
        cache: the visual feature cache: get(key) -> (features, meta) | None, put(key, features, meta)
            (in Triton, the `feature_cache` model; a FeatureCache in-process); None: no cache
            (answers say media.cache "off", and a request with only a media_digest is refused).
        base_sampling: the server's defaults; a request's own settings replace them field by field.
        server_media_root: whether requests may name media by path.
    """

    def __init__(self, front: Front, cache, base_sampling: SamplingSettings, server_media_root: bool):
        self.front, self.cache, self.base, self.server_media_root = front, cache, base_sampling, server_media_root

    def sampling_for(self, req: ParsedRequest) -> SamplingSettings:
        s = dataclasses.replace(self.base, **req.sampling)
        s.end_strings = list(dict.fromkeys([*req.end_strings, *self.base.end_strings]))
        return s

    def answer(self, req: ParsedRequest, call: Call, stream_call: StreamCall,
               on_delta: Optional[Callable[[Delta], None]] = None) -> dict:
        """The final result (the Answer's fields); streams text deltas through on_delta when given."""
        t0 = time.perf_counter()
        if req.media_path and not self.server_media_root:
            raise RequestError("media_path given but this server has no media root (start it with media_root=DIR); "
                               "send the media as media_bytes_input instead")
        sampling = self.sampling_for(req)
        pre_in: Tensors = {"text_input": encode_text(req.text)}
        if req.insert_media_token is not None:
            pre_in["insert_media_token"] = encode_text(req.insert_media_token)
        hit, key, media = None, None, {}
        if req.media_type is not None:
            pre_in["media_type"] = encode_text(req.media_type)
            if self.cache is not None:
                if req.media_digest is not None and req.media_bytes is None:
                    key = self.front.media_key_for_digest(req.media_digest, req.media_type)
                else:
                    key = self.front.media_key(Request(req.text, req.media_type, req.media_path, req.media_bytes))
                hit = self.cache.get(key)
            if hit is None and req.media_bytes is None and req.media_path is None:
                why = "this server has no feature cache" if self.cache is None else "its features are not in the cache"
                raise RequestError(f"{MEDIA_NOT_CACHED}: media_digest {req.media_digest} came without the media and "
                                   f"{why}; send media_bytes_input")
            if hit is not None:  # preprocess only builds the prompt: the media need not travel again
                pre_in["cached_rows"] = np.array([hit[0].shape[0]], np.int32)
            elif req.media_bytes is not None:
                pre_in["media_bytes_input"] = np.frombuffer(req.media_bytes, np.uint8)
            else:
                pre_in["media_path"] = encode_text(req.media_path)
        pre = call("preprocess", pre_in)
        ids = pre["input_ids"]
        table = None
        if hit is not None:
            table, media = hit[0].numpy(), {**hit[1], "cache": "hit"}
        elif req.media_type is not None:
            t1 = time.perf_counter()
            feats = call("vision_encoder", {"pixel_values": pre["pixel_values"]})["features"]
            table = np.ascontiguousarray(feats.reshape(-1, feats.shape[-1]), np.float32)
            media = json.loads(text_of(pre["media_meta"]))
            decode_s = media.pop("decode_s", None)
            if self.cache is not None:
                self.cache.put(key, torch.from_numpy(table), media)
            media = {**media, "cache": "miss" if self.cache is not None else "off", "decode_s": decode_s,
                     "encode_s": time.perf_counter() - t1}
        sampling = self.front.fit_sampling(len(ids), sampling)
        t_llm = time.perf_counter()
        llm_in: Tensors = {"input_ids": ids, "sampling": sampling_to_json(sampling),
                           "streaming": np.array([on_delta is not None])}
        if table is not None:
            llm_in["prompt_embedding_table"] = table
        final, streamed, sent, first_token_s = None, [], "", None
        for resp in stream_call("llm", llm_in):
            if "finish_reason" in resp:
                final = resp
                continue
            new = [int(i) for i in resp["output_ids"].reshape(-1)]
            if first_token_s is None:
                first_token_s = time.perf_counter() - t0
            if on_delta is None or not new:
                continue
            streamed += new
            text = text_of(call("postprocess", {"output_ids": np.asarray(streamed, np.int32),
                                                "end_strings": json_tensor(sampling.end_strings)})["text_output"])
            # a partial UTF-8 sequence decodes to U+FFFD, and text may shrink at an end string: wait
            if text.endswith("\ufffd") or not text.startswith(sent) or len(text) == len(sent):
                continue
            on_delta(Delta(text[len(sent):], new))
            sent = text
        if final is None:
            raise RuntimeError("the llm model ended its response stream without a final response")
        out_ids = [int(i) for i in final["output_ids"].reshape(-1)]
        logprobs = [float(x) for x in final["output_log_probs"].reshape(-1)] if sampling.all_probs else None
        post = call("postprocess", {"output_ids": np.asarray(out_ids, np.int32),
                                    "end_strings": json_tensor(sampling.end_strings),
                                    "with_tokens": np.array([sampling.all_probs])})
        raw = text_of(post["text_output"])
        if on_delta is not None and raw.startswith(sent) and len(raw) > len(sent):
            on_delta(Delta(raw[len(sent):], []))
        now = time.perf_counter()
        timings = {"media_s": t_llm - t0, "generate_s": now - t_llm, "total_s": now - t0,
                   "first_token_s": first_token_s, "prompt_tokens": int(ids.shape[0]), "output_tokens": len(out_ids)}
        return {"prompt": text_of(pre["prompt"]), "raw_response": raw, "clean_response": text_of(post["clean_response"]),
                "token_ids": out_ids, "finish_reason": text_of(final["finish_reason"]), "logprobs": logprobs,
                "tokens": json.loads(text_of(post["tokens"])) if sampling.all_probs else None,
                "media": media, "timings": timings}


def default_sampling(cfg: InferConfig, front: Front) -> SamplingSettings:
    return SamplingSettings.from_inference(cfg.inference, prompts.stop_strings(front.settings.template))
