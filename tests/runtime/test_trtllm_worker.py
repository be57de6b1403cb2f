"""The TensorRT-LLM language model over its executor: in this process and in a worker process under
another interpreter (real pipes). tensorrt_llm cannot be installed here: both import a stand-in
`tensorrt_llm.bindings.executor` that takes exactly the keyword arguments of the pybind bindings
(cpp/tensorrt_llm/pybind/executor/{request,executorConfig,executor}.cpp) and answers as the
executor does: responses for any request, interleaved, streamed ones before the final one."""
from __future__ import annotations

import json
import sys
import textwrap
import threading

import pytest
import torch

from videoneva.errors import VideoNevaError
from videoneva.runtime import trtllm_backend as llm_b
from videoneva.runtime.base import fake_media_ids
from videoneva.runtime.tensorrt_backend import BackendUnavailable
from videoneva.schema import SamplingSettings

STAND_IN = '''
import collections, threading

class ModelType:
    DECODER_ONLY = "decoder-only"
class CommunicationType:
    MPI = "mpi"
class CommunicationMode:
    LEADER, ORCHESTRATOR = "leader", "orchestrator"

def _kw(name, given, allowed):
    unknown = set(given) - set(allowed)
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword arguments {sorted(unknown)}")
    return dict(given)

class KvCacheConfig:
    def __init__(self, **kw):
        self.kw = _kw("KvCacheConfig", kw, {"enable_block_reuse", "max_tokens", "free_gpu_memory_fraction"})
class OrchestratorConfig:
    def __init__(self, is_orchestrator=True, worker_executable_path=""):
        self.path = worker_executable_path
class ParallelConfig:
    def __init__(self, communication_type, communication_mode, **kw):
        self.mode = communication_mode
class ExecutorConfig:
    def __init__(self, **kw):
        self.kw = _kw("ExecutorConfig", kw, {"max_beam_width", "kv_cache_config", "max_batch_size", "parallel_config"})
class SamplingConfig:
    def __init__(self, beam_width=1, **kw):
        self.kw = _kw("SamplingConfig", kw, {"top_k", "top_p", "temperature", "seed", "min_tokens", "repetition_penalty"})
class OutputConfig:
    def __init__(self, **kw):
        self.kw = _kw("OutputConfig", kw, {"return_log_probs", "exclude_input_from_output"})
class PromptTuningConfig:
    def __init__(self, embedding_table, input_token_extra_ids=None):
        self.table, self.extra = embedding_table, input_token_extra_ids
class Request:
    def __init__(self, input_token_ids, max_tokens, **kw):
        self.ids, self.max_tokens = input_token_ids, max_tokens
        self.kw = _kw("Request", kw, {"streaming", "sampling_config", "output_config", "end_id", "pad_id",
                                      "stop_words", "prompt_tuning_config"})
class Result:
    def __init__(self, ids, final, logprobs):
        self.output_token_ids, self.is_final, self.log_probs = [ids], final, [logprobs] if logprobs else None
class Response:
    def __init__(self, rid, result=None, error=None):
        self.request_id, self.result, self.error_msg = rid, result, error
    def has_error(self):
        return self.error_msg is not None

class Executor:
    """Generates first, first+1, first+2 then end_id, where first depends on the prompt table."""
    def __init__(self, path, model_type, config):
        if str(path).endswith("bad"):
            raise RuntimeError("engine built for another GPU")
        self.queue, self.next, self.cond, self.cancelled = collections.deque(), 1, threading.Condition(), set()
    def enqueue_request(self, r):
        rid, self.next = self.next, self.next + 1
        if r.max_tokens == 13:
            out = [Response(rid, error="bad request")]
        else:
            t = r.kw.get("prompt_tuning_config")
            first = 10 if t is None else 10 + int(t.table.float().abs().sum().item() * 1000) % 37
            if t is not None and (t.extra is None or len(t.extra) != len(r.ids)):
                raise ValueError("extra ids must cover the input ids")
            gen = [first, first + 1, first + 2, r.kw["end_id"]][: r.max_tokens]
            lp = r.kw["output_config"].kw.get("return_log_probs")
            if r.kw["streaming"]:
                out = [Response(rid, Result([g], i == len(gen) - 1, [-0.5] if lp else None)) for i, g in enumerate(gen)]
            else:
                out = [Response(rid, Result(gen, True, [-0.5] * len(gen) if lp else None))]
        with self.cond:
            self.queue.extend(out)
            self.cond.notify()
        return rid
    def await_responses(self, timeout=None):
        with self.cond:
            self.cond.wait_for(lambda: self.queue, timeout.total_seconds())
            # one response at a time from the front, another request's next: they interleave
            return [self.queue.popleft()] if self.queue else []
    def cancel_request(self, rid):
        self.cancelled.add(rid)
    def get_latest_iteration_stats(self):
        return []
    def shutdown(self):
        pass
'''


@pytest.fixture()
def stand_in(tmp_path, monkeypatch):
    """The stand-in package on this process's path and the worker's, and an engine directory."""
    site = tmp_path / "site"
    (site / "tensorrt_llm" / "bindings").mkdir(parents=True)
    (site / "tensorrt_llm" / "__init__.py").write_text("def mpi_world_size():\n    return 1\n")
    (site / "tensorrt_llm" / "bindings" / "__init__.py").write_text("")
    (site / "tensorrt_llm" / "bindings" / "executor.py").write_text(textwrap.dedent(STAND_IN))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(llm_b, "cuda_unavailable_reason", lambda: None)  # this machine has no GPU
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({
        "pretrained_config": {"vocab_size": 448, "hidden_size": 64, "dtype": "float16",
                              "mapping": {"tp_size": 1, "pp_size": 1}},
        "build_config": {"max_seq_len": 64, "max_input_len": 48, "max_prompt_embedding_table_size": 32}}))
    (engine / "rank0.engine").write_text("")
    yield engine
    for name in [m for m in sys.modules if m.startswith("tensorrt_llm")]:
        del sys.modules[name]


@pytest.mark.parametrize("where", ["in-process", "worker"])
def test_requests_in_flight_are_answered_each_its_own(stand_in, tiny_tokenizer, monkeypatch, where):
    if where == "worker":
        monkeypatch.setenv(llm_b.PYTHON_ENV, sys.executable)
    else:
        monkeypatch.delenv(llm_b.PYTHON_ENV, raising=False)
    m = llm_b.TensorRTLLMLanguageModel(stand_in, tiny_tokenizer, 5, max_batch_size=8)
    try:
        assert (m.vocab_size, m.hidden_size, m.max_context, m.dtype) == (448, 64, 64, torch.float16)
        feats = [torch.randn(4, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
        ids = fake_media_ids([1, 9, 9, 9, 9, 6], [1, 2, 3, 4], m.vocab_size)
        firsts = [10 + int(f.to(torch.float16).float().abs().sum().item() * 1000) % 37 for f in feats]
        s = SamplingSettings(max_tokens=8, greedy=True, repetition_penalty=1.0, return_log_probs=True)
        seen = [[] for _ in feats]
        handles = [m.submit(ids, f, s, on_token=seen[i].append, media_key=f"{i:064x}") for i, f in enumerate(feats)]
        outs = [h.result(30) for h in handles]
        for first, out, streamed in zip(firsts, outs, seen):
            assert out.token_ids == [first, first + 1, first + 2] and out.finish_reason == "stop"
            assert out.logprobs == [-0.5] * 3 and streamed == out.token_ids
        whole = m.generate(ids[:1], None, s)  # not streamed: one final response
        assert whole.token_ids == [10, 11, 12]
        with pytest.raises(VideoNevaError, match="bad request"):
            m.generate(ids, feats[0], SamplingSettings(max_tokens=13, greedy=True))
        done = threading.Event()
        m.submit(ids[:1], None, s, on_done=lambda out, err: done.set())
        assert done.wait(30)
    finally:
        m.close()


def test_worker_load_errors_are_named(stand_in, tmp_path, monkeypatch, tiny_tokenizer):
    from videoneva.runtime.trtllm_worker import WorkerClient

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((stand_in / "config.json").read_text())
    with pytest.raises(BackendUnavailable, match="could not load .*bad: RuntimeError: engine built for another GPU"):
        WorkerClient(sys.executable, bad, {}, lambda *a: None)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "empty"))
    monkeypatch.setenv(llm_b.PYTHON_ENV, sys.executable)
    reason = llm_b.trtllm_unavailable_reason()
    assert f"tensorrt_llm does not import under {llm_b.PYTHON_ENV}={sys.executable}" in reason
    assert "No module named 'tensorrt_llm'" in reason
