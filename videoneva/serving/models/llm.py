"""Triton model `llm`: prompt ids + prompt table (TensorRT-LLM multimodal convention) → token ids.

Decoupled: with `streaming`, one response per generated id, then the final response with every
id, the log-probs and the finish reason. ONNX Runtime or torch on CPU, TensorRT-LLM on GPU.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from videoneva.config import normalize_precision
from videoneva.runtime.engine import load_llm, load_tokenizer
from videoneva.runtime.engine_dir import EngineDir
from videoneva.schema import SamplingSettings
from videoneva.serving.tensors import Tensors, json_of, json_tensor, scalar_of, string_tensor

INPUTS = {"input_ids": ("TYPE_INT32", [-1]), "prompt_embedding_table": ("TYPE_FP32", [-1, -1]),
          "sampling": ("TYPE_STRING", [1]), "streaming": ("TYPE_BOOL", [1])}
OUTPUTS = {"output_ids": ("TYPE_INT32", [-1]), "output_log_probs": ("TYPE_FP32", [-1]),
           "finish_reason": ("TYPE_STRING", [1])}
DECOUPLED = True


def sampling_tensor(s: SamplingSettings) -> np.ndarray:
    return json_tensor(dataclasses.asdict(s))


class LLMModel:
    """Runs a LanguageModel (torch, ONNX Runtime or TensorRT-LLM) for one request at a time."""

    def __init__(self, llm):
        self.llm = llm

    def __call__(self, inputs: Tensors, call) -> Tensors:
        import torch

        ids = [int(i) for i in np.asarray(inputs["input_ids"]).reshape(-1)]
        table = inputs.get("prompt_embedding_table")
        table = None if table is None or table.size == 0 else torch.from_numpy(np.asarray(table, np.float32))
        on_token = None
        if bool(scalar_of(inputs.get("streaming"), "streaming") or False):
            def on_token(tid: int) -> None:
                call.send({"output_ids": np.array([tid], np.int32)})
        out = self.llm.generate(ids, table, SamplingSettings(**json_of(inputs["sampling"], "sampling")),
                                on_token=on_token)
        return {"output_ids": np.asarray(out.token_ids, np.int32),
                "output_log_probs": np.asarray(out.logprobs or [], np.float32),
                "finish_reason": string_tensor(out.finish_reason)}


def make(params: dict[str, str], bls=None) -> LLMModel:
    threads = int(params.get("threads") or 0)
    if threads:
        import torch

        torch.set_num_threads(threads)  # the ONNX Runtime LLM takes as many intra-op threads
    eng = EngineDir.read(params["engine_dir"])
    _, backend = eng.backends(params.get("device", "auto"))
    return LLMModel(load_llm(eng, backend, load_tokenizer(eng), normalize_precision(params.get("precision", "32"))))
