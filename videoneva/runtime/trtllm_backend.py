"""TensorRT-LLM language model: an engine built by trtllm-build (engine_dir/llm/trtllm_engine), run by ModelRunnerCpp.

Visual rows reach the engine as TensorRT-LLM prompt tuning: media positions carry fake ids
vocab_size + k (vocab_size of the *engine*, padded to a multiple of 64 for AWQ checkpoints) and
`prompt_table` [1, rows, hidden] in the engine dtype holds their embeddings (one task, index 0),
as tensorrt_llm/runtime/multimodal_model_runner.py does. `tensorrt_llm` is imported only when a
model is built, so CPU users never need it. The pure helpers below (kwargs, table, output
parsing) are what the CPU tests check.

With VIDEONEVA_TRTLLM_PYTHON=/path/to/python the engine runs in a worker process under that
interpreter (trtllm_worker.py), so TensorRT-LLM keeps the transformers version it pins while
this process has transformers 5 (the GPU image: docs/gpu-image.md).
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
from transformers import PreTrainedTokenizerBase

from videoneva.errors import CheckpointError, PromptError
from videoneva.generation import SamplingSettings, split_end_strings, trtllm_sampling_kwargs
from videoneva.runtime.base import GenerationOutput, TokenCallback
from videoneva.runtime.tensorrt_backend import BackendUnavailable, cuda_unavailable_reason
from videoneva.runtime.trtllm_worker import WorkerRunner, runner_info

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
        import tensorrt_llm.bindings  # noqa: F401  (ModelRunnerCpp wraps the C++ executor)
    except ImportError as exc:
        return f"tensorrt_llm has no C++ bindings ({exc}); ModelRunnerCpp needs a full TensorRT-LLM install"
    return cuda_unavailable_reason()


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
    """engine_dir if it holds a trtllm-build output (config.json + rank0.engine), else CheckpointError."""
    d = Path(engine_dir)
    missing = [f for f in ENGINE_FILES if not (d / f).is_file()]
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
        """One request's stop words as token sequences (ModelRunnerCpp `stop_words_list[i]`)."""
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


def generate_kwargs(sampling: SamplingSettings, rule: StopRule, max_new_tokens: Optional[int] = None,
                    streaming: bool = False) -> dict:
    """Keyword arguments of ModelRunnerCpp.generate for one request (besides ids and prompt table).

    Names follow tensorrt_llm/runtime/model_runner_cpp.py: sampling kwargs it accepts are top_k, top_p,
    temperature, min_tokens, repetition_penalty and random_seed (renamed to seed for the executor);
    greedy is top_k=1 (generation.trtllm_sampling_kwargs).

    Args:
        sampling: the request's settings.
        rule: from stop_rule().
        max_new_tokens: overrides sampling.tokens_to_generate (to fit the engine's max_seq_len).
        streaming: return a generator of partial outputs.
    """
    s = trtllm_sampling_kwargs(sampling)
    kw = {
        "max_new_tokens": int(max_new_tokens if max_new_tokens is not None else s["max_new_tokens"]),
        "end_id": rule.end_id, "pad_id": rule.pad_id,
        "top_k": int(s["top_k"]), "top_p": float(s["top_p"]), "temperature": float(s["temperature"]),
        "repetition_penalty": float(s["repetition_penalty"]),
        "streaming": streaming, "output_log_probs": bool(sampling.all_probs),
        "output_sequence_lengths": True, "return_dict": True,
    }
    if s["min_length"]:
        kw["min_tokens"] = int(s["min_length"])
    if s["random_seed"] is not None and not sampling.greedy:
        kw["random_seed"] = int(s["random_seed"])
    words = rule.words_list()
    if words:
        kw["stop_words_list"] = [words]  # one entry per request in the batch
    return kw


def make_prompt_table(features: Optional[torch.Tensor], hidden_size: int, dtype: torch.dtype, max_rows: int,
                 device: str | torch.device = "cuda") -> Optional[torch.Tensor]:
    """Visual features [N, D] → the engine's prompt table [1, N, D] (one task) in its dtype and device.

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
    return features.to(device=device, dtype=dtype).unsqueeze(0).contiguous()  # (1, N, D)


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


class OutputReader:
    """Collects generated ids (and log-probs) from ModelRunnerCpp outputs, one request, beam 0.

    Each output dict holds `output_ids` [1, beams, max_seq_len] (prompt + generated so far, padded
    with end_id), `sequence_lengths` [1, beams] and, with output_log_probs, `log_probs`
    [1, beams, n]: all generated tokens when not streaming, that step's new tokens when streaming.
    """

    def __init__(self, input_len: int, end_id: int, on_token: Optional[TokenCallback] = None):
        self.input_len, self.end_id, self.on_token = input_len, end_id, on_token
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.first_token_s: Optional[float] = None

    def add(self, out: dict) -> None:
        seq_len = int(out["sequence_lengths"][0][0])
        ids = out["output_ids"][0][0]
        start = self.input_len + len(self.tokens)
        new = [int(t) for t in (ids[start:seq_len].tolist() if hasattr(ids, "tolist") else ids[start:seq_len])]
        if not new:
            return
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter()
        if out.get("log_probs") is not None:
            lp = out["log_probs"][0][0]
            lp = lp.tolist() if hasattr(lp, "tolist") else list(lp)
            self.logprobs += [float(x) for x in lp[:len(new)]]  # padded past this request's tokens
        self.tokens += new
        if self.on_token is not None:
            for t in new:
                if t != self.end_id:
                    self.on_token(t)

    def read(self, outputs: dict | Iterable[dict]) -> "OutputReader":
        for out in ([outputs] if isinstance(outputs, dict) else outputs):
            self.add(out)
        return self


class TensorRTLLMLanguageModel:
    """LanguageModel over a trtllm-build engine (ModelRunnerCpp), one request at a time.

    Args:
        engine_dir: trtllm-build output (config.json + rank*.engine).
        tokenizer: the model's tokenizer (eos/pad ids, end strings).
        media_token_id: an in-vocabulary id standing in for media rows (media.json image_token_id).
        kv_cache_free_gpu_memory_fraction: share of free GPU memory for the paged KV cache (TensorRT-LLM
            default 0.9 when None); leave room for the vision plan when it shares the GPU.
    """

    def __init__(self, engine_dir: str | Path, tokenizer: PreTrainedTokenizerBase, media_token_id: int,
                 kv_cache_free_gpu_memory_fraction: Optional[float] = None):
        d = check_engine_dir(engine_dir)
        reason = trtllm_unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"cannot run the TensorRT-LLM engine {d}: {reason}")
        python = os.environ.get(PYTHON_ENV)
        if python:
            self.runner = WorkerRunner(python, d, kv_cache_free_gpu_memory_fraction)
            info, self.table_device = self.runner.info, torch.device("cpu")  # the worker moves it to the GPU
        else:
            import tensorrt_llm
            from tensorrt_llm.runtime import ModelRunnerCpp

            self.runner = ModelRunnerCpp.from_dir(str(d), rank=tensorrt_llm.mpi_rank(),
                                                  kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction)
            info, self.table_device = runner_info(self.runner), torch.device("cuda")  # ModelRunnerCpp moves it there
        self.engine_dir, self.tokenizer, self.image_token_id = d, tokenizer, media_token_id
        self.vocab_size = info["vocab_size"]  # fake ids start here (the engine's, maybe padded)
        self.hidden_size = info["hidden_size"]
        self.max_context = info["max_seq_len"]
        self.max_input_len = info["max_input_len"]
        self.max_table_rows = info["max_prompt_embedding_table_size"]
        self.dtype = getattr(torch, info["dtype"])

    @torch.inference_mode()
    def generate(self, input_ids: list[int], prompt_table: Optional[torch.Tensor], sampling: SamplingSettings,
                 on_token: Optional[TokenCallback] = None) -> GenerationOutput:
        t0 = time.perf_counter()
        if len(input_ids) > self.max_input_len:
            raise PromptError(f"prompt is {len(input_ids)} tokens but the engine takes at most {self.max_input_len} "
                              "(trtllm-build --max_input_len); shorten the text or use fewer frames")
        table = make_prompt_table(prompt_table, self.hidden_size, self.dtype, self.max_table_rows,
                                  self.table_device)
        check_ids(input_ids, self.vocab_size, 0 if table is None else table.shape[1])
        max_new = min(sampling.tokens_to_generate, self.max_context - len(input_ids))
        if max_new < 1:
            raise PromptError(f"prompt is {len(input_ids)} tokens and the engine's max_seq_len is {self.max_context}: "
                              "no room to generate")
        rule = stop_rule(self.tokenizer, sampling.end_strings)
        kw = generate_kwargs(sampling, rule, max_new_tokens=max_new, streaming=on_token is not None)
        ids = torch.tensor(input_ids, dtype=torch.int32)
        outputs = self.runner.generate([ids], prompt_table=table, **kw)
        reader = OutputReader(len(input_ids), rule.end_id, on_token).read(outputs)
        tokens, reason = finish(reader.tokens, rule, max_new)
        logprobs = reader.logprobs[: len(tokens)] if sampling.all_probs else None
        timings = {"generate_s": time.perf_counter() - t0}
        if reader.first_token_s is not None and on_token is not None:
            timings["first_token_s"] = reader.first_token_s - t0
        return GenerationOutput(tokens, reason, logprobs, timings)
