"""TensorRT-LLM language model: an engine built by trtllm-build (engine_dir/llm/trtllm_engine), run by
TensorRT-LLM's own executor with in-flight batching.

One `tensorrt_llm.bindings.executor.Executor` per process: every request is enqueued as it
arrives (`enqueue_request`), the executor batches all of them in flight on the GPU, and one
response thread routes `await_responses()` to each request by its id (tokens streamed to its
callback, the final result to its waiter). Visual rows reach the engine as prompt tuning: media
positions carry fake ids vocab_size + k (vocab_size of the *engine*) and the request's
`PromptTuningConfig(embedding_table [rows, hidden])` holds their embeddings, with
`input_token_extra_ids` set from the media's content hash at those positions so the executor's
KV-cache block reuse tells two videos apart (the same fake ids otherwise). An engine built with
tensor or pipeline parallelism runs in orchestrator mode: the executor spawns one MPI worker per
rank (`tensorrt_llm/bin/executorWorker`). Request, config and result field names follow
cpp/tensorrt_llm/pybind/executor/{request,executorConfig,executor,bindings}.cpp.
`tensorrt_llm` is imported only when a model is built, so CPU users never need it; the pure
helpers below (request fields, table, extra ids, finishing) are what the CPU tests check.

The executor runs in this process (trtllm_worker.ExecutorHost), or, with
VIDEONEVA_TRTLLM_PYTHON=/path/to/python, in a worker under that interpreter, so TensorRT-LLM keeps
the transformers version it pins while this process has transformers 5 (the GPU image:
docs/gpu-image.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import PreTrainedTokenizerBase

from videoneva.errors import CheckpointError, PromptError, VideoNevaError
from videoneva.generation import SamplingSettings, split_end_strings, trtllm_sampling_kwargs
from videoneva.runtime.base import GenerationOutput, TokenCallback
from videoneva.runtime.tensorrt_backend import BackendUnavailable, cuda_unavailable_reason

log = logging.getLogger(__name__)
ENGINE_FILES = ("config.json", "rank0.engine")
PYTHON_ENV = "VIDEONEVA_TRTLLM_PYTHON"  # the interpreter that runs TensorRT-LLM, when not this one


def trtllm_unavailable_reason() -> Optional[str]:
    """None when a TensorRT-LLM engine can run here, else what is missing or broken (module, C++ bindings, CUDA).

    "Not installed" (no `tensorrt_llm` module) and "broken install" (the module is there but importing it
    fails, e.g. a TensorRT-LLM release that needs transformers 4.x next to transformers 5) are told
    apart, since they are fixed differently.
    """
    python = os.environ.get(PYTHON_ENV)
    if python:
        try:
            proc = subprocess.run([python, "-c", "import tensorrt_llm, tensorrt_llm.bindings"], capture_output=True,
                                  text=True, timeout=600)
        except OSError as exc:
            return f"{PYTHON_ENV}={python} cannot be run ({exc})"
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return f"tensorrt_llm does not import under {PYTHON_ENV}={python}: {last}"
        return cuda_unavailable_reason()
    try:
        import tensorrt_llm  # noqa: F401
    except ImportError as exc:
        if exc.name == "tensorrt_llm":
            return (f"the `tensorrt_llm` Python package is not installed ({exc}); install the TensorRT-LLM version "
                    "the engine was built with (NVIDIA's wheel or the Triton TensorRT-LLM container)")
        return _broken_install(exc)
    except Exception as exc:  # an installed package whose import raises anything else is broken as well
        return _broken_install(exc)
    try:
        import tensorrt_llm.bindings.executor  # noqa: F401  (the C++ executor)
    except ImportError as exc:
        return f"tensorrt_llm has no C++ bindings ({exc}); its executor needs a full TensorRT-LLM install"
    return cuda_unavailable_reason()


def engine_world_size(engine_dir: str | Path) -> int:
    """tp × pp of a trtllm-build output (config.json pretrained_config.mapping; 1 when absent)."""
    config = json.loads((Path(engine_dir) / "config.json").read_text())
    mapping = config.get("pretrained_config", {}).get("mapping", {})
    return int(mapping.get("tp_size", 1)) * int(mapping.get("pp_size", 1))


def _broken_install(exc: BaseException) -> str:
    from importlib import metadata

    try:
        transformers = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers = "none"
    return (f"tensorrt_llm is installed but broken: importing it failed with {type(exc).__name__}: {exc} "
            f"(transformers {transformers} is installed; TensorRT-LLM releases up to 1.2 need transformers 4.x, "
            "see docs/gpu-image.md)")


def check_engine_dir(engine_dir: str | Path) -> Path:
    """engine_dir if it holds a trtllm-build output with every rank's engine, else CheckpointError."""
    d = Path(engine_dir)
    missing = [f for f in ENGINE_FILES if not (d / f).is_file()]
    if not missing:
        missing = [f"rank{r}.engine" for r in range(engine_world_size(d)) if not (d / f"rank{r}.engine").is_file()]
    if missing:
        raise CheckpointError(f"TensorRT-LLM engine {d}: missing {', '.join(missing)}; build it on a GPU machine "
                              "with `videoneva build … llm.backend=tensorrt_llm` (or the trtllm-build command in "
                              "manifest.json)")
    return d


@dataclass
class StopRule:
    """How a request stops: the engine's end id, single-token stop ids, and multi-token stop sequences."""

    end_id: int
    pad_id: int
    stop_ids: list[int] = field(default_factory=list)          # dropped from the output, like eos
    stop_sequences: list[list[int]] = field(default_factory=list)  # kept; the pipeline trims the text

    def words_list(self) -> Optional[list[list[int]]]:
        """One request's stop words as token sequences (the executor request's `stop_words`)."""
        words = [[i] for i in self.stop_ids if i != self.end_id] + [list(s) for s in self.stop_sequences]
        return words or None


def stop_rule(tokenizer: PreTrainedTokenizerBase, end_strings: list[str]) -> StopRule:
    """End strings → end id (eos), other one-token stop ids, and the rest as token sequences.

    One-token end strings stop exactly (as in the torch backend); longer ones are matched by
    TensorRT-LLM on their standalone tokenization, and the pipeline also trims the text at them.
    """
    stop_ids, texts = split_end_strings(tokenizer, end_strings)
    end_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else (stop_ids[0] if stop_ids else 0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    seqs = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return StopRule(end_id, pad_id, [i for i in stop_ids if i != end_id], [s for s in seqs if s])


def request_fields(sampling: SamplingSettings, rule: StopRule, max_new_tokens: int, streaming: bool) -> dict:
    """The executor Request's fields for one request, as plain values (besides ids and the table).

    `sampling` → SamplingConfig(beam_width=1, top_k, top_p, temperature, seed, min_tokens,
    repetition_penalty); greedy is top_k=1 (generation.trtllm_sampling_kwargs).
    """
    s = trtllm_sampling_kwargs(sampling)
    config = {"top_k": int(s["top_k"]), "top_p": float(s["top_p"]), "temperature": float(s["temperature"]),
              "repetition_penalty": float(s["repetition_penalty"])}
    if s["min_length"]:
        config["min_tokens"] = int(s["min_length"])
    if s["random_seed"] is not None and not sampling.greedy:
        config["seed"] = int(s["random_seed"])
    return {"max_tokens": int(max_new_tokens), "streaming": streaming, "end_id": rule.end_id, "pad_id": rule.pad_id,
            "stop_words": rule.words_list(), "sampling_config": config,
            "output_config": {"return_log_probs": bool(sampling.return_log_probs), "exclude_input_from_output": True}}


def media_extra_ids(input_ids: list[int], vocab_size: int, media_key: Optional[str]) -> Optional[list[int]]:
    """Per-token extra ids for KV-cache reuse: at media positions a number drawn from the media's key,
    0 elsewhere, so cached blocks of one video never serve another whose fake ids coincide."""
    if media_key is None or not any(i >= vocab_size for i in input_ids):
        return None
    extra = int.from_bytes(hashlib.sha256(media_key.encode()).digest()[:7], "big") + 1  # < 2^63, never 0
    return [extra if i >= vocab_size else 0 for i in input_ids]


def make_prompt_table(features: Optional[torch.Tensor], hidden_size: int, dtype: torch.dtype, max_rows: int,
                 device: str | torch.device = "cuda") -> Optional[torch.Tensor]:
    """Visual features [N, D] → the request's prompt table [N, D] in the engine's dtype and device.

    Args:
        features: the pipeline's prompt table [N, D] (any float dtype/device), or None for text only.
        hidden_size: the engine's hidden size (× tp size).
        dtype: the engine dtype (a mismatch is a known TensorRT-LLM error, so it is cast here).
        max_rows: max_prompt_embedding_table_size of the engine (trtllm-build --max_multimodal_len).
        device: where the table goes (the runner copies it to CUDA anyway).
    """
    if features is None:
        return None
    if features.ndim != 2:
        raise ValueError(f"prompt table must be [rows, hidden], got {list(features.shape)}")
    rows, hidden = features.shape
    if hidden != hidden_size:
        raise ValueError(f"prompt table hidden size {hidden} does not match the engine's {hidden_size}")
    if rows > max_rows:
        raise PromptError(f"{rows} media rows exceed the engine's prompt table ({max_rows} rows, trtllm-build "
                          "--max_multimodal_len); use fewer frames (data.num_frames), data.frame_token_pool, "
                          "or rebuild")
    return features.to(device=device, dtype=dtype).contiguous()  # (N, D)


def check_ids(input_ids: list[int], vocab_size: int, rows: int) -> None:
    """Every fake id vocab_size + k must have a row k < rows in the prompt table."""
    fake = [i - vocab_size for i in input_ids if i >= vocab_size]
    if fake and rows == 0:
        raise ValueError("input_ids hold media ids but no prompt table was given")
    if fake and max(fake) >= rows:
        raise ValueError(f"media id row {max(fake)} outside the prompt table ({rows} rows)")


def finish(tokens: list[int], rule: StopRule, max_new_tokens: int) -> tuple[list[int], str]:
    """(generated ids without a trailing end/stop id, finish reason "stop" | "length")."""
    if tokens and (tokens[-1] == rule.end_id or tokens[-1] in rule.stop_ids):
        return tokens[:-1], "stop"
    if any(len(s) <= len(tokens) and tokens[-len(s):] == s for s in rule.stop_sequences):
        return tokens, "stop"
    return tokens, ("stop" if len(tokens) < max_new_tokens else "length")


class _Pending:
    """One enqueued request: its tokens as they come, and its end."""

    def __init__(self, input_len: int, rule: StopRule, max_new: int, sampling: SamplingSettings,
                 on_token: Optional[TokenCallback], on_done):
        self.input_len, self.rule, self.max_new, self.sampling = input_len, rule, max_new, sampling
        self.on_token, self.on_done = on_token, on_done
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self._done = threading.Event()
        self.output: Optional[GenerationOutput] = None
        self.error: Optional[BaseException] = None
        self.cancel = lambda: None

    def add(self, new: list[int], logprobs: Optional[list[float]]) -> None:
        self.tokens += new
        if logprobs:
            self.logprobs += logprobs[: len(new)]
        if self.on_token is not None:
            for t in new:
                if t != self.rule.end_id:
                    self.on_token(t)

    def end(self, error: Optional[BaseException] = None) -> None:
        if error is None:
            tokens, reason = finish(self.tokens, self.rule, self.max_new)
            logprobs = self.logprobs[: len(tokens)] if self.sampling.return_log_probs else None
            self.output = GenerationOutput(tokens, reason, logprobs)
        self.error = error
        self._done.set()
        if self.on_done is not None:
            self.on_done(self.output, error)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: Optional[float] = None) -> GenerationOutput:
        if not self._done.wait(timeout):
            raise TimeoutError(f"no result within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.output


class TensorRTLLMLanguageModel:
    """LanguageModel over a trtllm-build engine, batching every request in flight (see the module docstring).

    Args:
        engine_dir: trtllm-build output (config.json + rank*.engine).
        tokenizer: the model's tokenizer (eos/pad ids, end strings).
        media_token_id: an in-vocabulary id standing in for media rows (media.json image_token_id).
        max_batch_size: most requests the executor schedules at once (None: the engine's).
        kv_cache_free_gpu_memory_fraction: share of the GPU memory left free after the engine for its paged
            KV cache (TensorRT-LLM's default 0.9 when None); load the vision plan first, so it is counted.
    """

    def __init__(self, engine_dir: str | Path, tokenizer: PreTrainedTokenizerBase, media_token_id: int,
                 max_batch_size: Optional[int] = None, kv_cache_free_gpu_memory_fraction: Optional[float] = None):
        from videoneva.runtime.trtllm_worker import ExecutorHost, WorkerClient

        d = check_engine_dir(engine_dir)
        reason = trtllm_unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"cannot run the TensorRT-LLM engine {d}: {reason}")
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        options = {"max_batch_size": max_batch_size, "kv_cache_free_gpu_memory_fraction": kv_cache_free_gpu_memory_fraction}
        python = os.environ.get(PYTHON_ENV)
        self.host = (WorkerClient(python, d, options, self._on_response) if python else
                     ExecutorHost(d, options, self._on_response))
        info = self.host.info
        self.engine_dir, self.tokenizer, self.image_token_id = d, tokenizer, media_token_id
        self.vocab_size = info["vocab_size"]      # fake ids start here (the engine's vocabulary)
        self.hidden_size = info["hidden_size"]    # the whole model's width, not one rank's slice
        self.max_context = info["max_seq_len"]
        self.max_input_len = info["max_input_len"]
        self.max_table_rows = info["max_prompt_embedding_table_size"]
        self.dtype = getattr(torch, info["dtype"])

    def submit(self, input_ids: list[int], prompt_table: Optional[torch.Tensor], sampling: SamplingSettings,
               on_token: Optional[TokenCallback] = None, on_done=None, media_key: Optional[str] = None) -> _Pending:
        """Enqueue one request; its tokens go to on_token and its end to on_done(result, error)."""
        if len(input_ids) > self.max_input_len:
            raise PromptError(f"prompt is {len(input_ids)} tokens but the engine takes at most {self.max_input_len} "
                              "(trtllm-build --max_input_len); shorten the text or use fewer frames")
        table = make_prompt_table(prompt_table, self.hidden_size, self.dtype, self.max_table_rows, "cpu")
        check_ids(input_ids, self.vocab_size, 0 if table is None else table.shape[0])
        max_new = min(sampling.max_tokens, self.max_context - len(input_ids))
        if max_new < 1:
            raise PromptError(f"prompt is {len(input_ids)} tokens and the engine's max_seq_len is {self.max_context}: "
                              "no room to generate")
        rule = stop_rule(self.tokenizer, sampling.end_strings)
        fields = request_fields(sampling, rule, max_new, streaming=on_token is not None)
        key = uuid.uuid4().hex
        pending = _Pending(len(input_ids), rule, max_new, sampling, on_token, on_done)
        pending.cancel = lambda: self.host.cancel(key)
        with self._lock:
            self._pending[key] = pending
        try:
            self.host.submit(key, list(input_ids), table, fields, media_extra_ids(input_ids, self.vocab_size, media_key))
        except Exception:
            with self._lock:
                self._pending.pop(key, None)
            raise
        return pending

    def generate(self, input_ids: list[int], prompt_table: Optional[torch.Tensor], sampling: SamplingSettings,
                 on_token: Optional[TokenCallback] = None, media_key: Optional[str] = None) -> GenerationOutput:
        t0 = time.perf_counter()
        out = self.submit(input_ids, prompt_table, sampling, on_token, media_key=media_key).result()
        out.timings["generate_s"] = time.perf_counter() - t0
        return out

    def _on_response(self, key: Optional[str], tokens: list[int], logprobs: Optional[list[float]], final: bool,
                     error: Optional[str]) -> None:
        """The host's responses, to the request they belong to (key None: the host is gone, all fail)."""
        with self._lock:
            if key is None:
                ended, self._pending = list(self._pending.values()), {}
            else:
                p = self._pending.pop(key, None) if final else self._pending.get(key)
                ended = [] if p is None else [p]
        for p in ended:
            if error is not None:
                p.end(VideoNevaError(f"TensorRT-LLM: {error}"))
                continue
            p.add(tokens, logprobs)
            if final:
                p.end()

    def figures(self) -> dict[str, int]:
        """The executor's latest iteration statistics (Triton metrics videoneva_llm_*)."""
        return self.host.stats()

    def close(self) -> None:
        self.host.close()
