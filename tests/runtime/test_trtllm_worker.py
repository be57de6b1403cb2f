"""The TensorRT-LLM worker process (another interpreter runs the engine) and its client, end to end over real
pipes. tensorrt_llm cannot be installed here: the worker imports a stand-in package that answers as
ModelRunnerCpp does (tensorrt_llm/runtime/model_runner_cpp.py output format)."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from videoneva.generation import SamplingSettings
from videoneva.runtime import trtllm_backend as llm_b
from videoneva.runtime.base import fake_media_ids
from videoneva.runtime.tensorrt_backend import BackendUnavailable
from videoneva.runtime.trtllm_worker import WorkerRunner

STAND_IN = '''
import torch

class _Mapping:
    tp_size = 1

class ModelRunnerCpp:
    vocab_size, hidden_size, max_seq_len, max_input_len = 448, 64, 64, 48
    max_prompt_embedding_table_size, dtype, mapping = 32, torch.float16, _Mapping()

    @classmethod
    def from_dir(cls, engine_dir, rank=0, kv_cache_free_gpu_memory_fraction=None):
        if engine_dir.endswith("bad"):
            raise RuntimeError("engine built for another GPU")
        return cls()

    def generate(self, batch_input_ids, prompt_table=None, **kw):
        ids = batch_input_ids[0]
        if ids.dtype != torch.int32 or kw["max_new_tokens"] == 13:
            raise ValueError("bad request")
        first = 10 if prompt_table is None else 10 + int(prompt_table.float().abs().sum().item() * 1000) % 37
        if prompt_table is not None and (prompt_table.dtype != torch.float16 or prompt_table.shape[0] != 1):
            raise ValueError(f"prompt table {prompt_table.dtype} {tuple(prompt_table.shape)}")
        gen = [first, first + 1, first + 2, kw["end_id"]][: kw["max_new_tokens"]]
        def out(n):
            row = ids.tolist() + gen[:n] + [kw["end_id"]] * (self.max_seq_len - len(ids) - n)
            return {"output_ids": torch.tensor([[row]]), "sequence_lengths": torch.tensor([[len(ids) + n]]),
                    "log_probs": torch.full((1, 1, n), -0.5) if kw["output_log_probs"] else None}
        return (out(n) for n in range(1, len(gen) + 1)) if kw["streaming"] else out(len(gen))
'''


@pytest.fixture()
def worker_env(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "tensorrt_llm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("def mpi_rank():\n    return 0\n")
    (pkg / "bindings.py").write_text("")
    (pkg / "runtime.py").write_text(textwrap.dedent(STAND_IN))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))  # the worker's interpreter only
    monkeypatch.setenv(llm_b.PYTHON_ENV, sys.executable)
    engine = tmp_path / "engine"
    engine.mkdir()
    for f in llm_b.ENGINE_FILES:
        (engine / f).write_text("")
    return engine


def test_generation_through_the_worker(worker_env, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(llm_b, "cuda_unavailable_reason", lambda: None)  # this machine has no GPU
    assert "tensorrt_llm" not in sys.modules
    m = llm_b.TensorRTLLMLanguageModel(worker_env, tiny_tokenizer, 5)
    try:
        assert "tensorrt_llm" not in sys.modules, "the engine's library stays in the worker"
        assert (m.vocab_size, m.hidden_size, m.max_context, m.dtype) == (448, 64, 64, torch.float16)
        feats = torch.randn(4, 64)
        ids = fake_media_ids([1, 9, 9, 9, 9, 6], [1, 2, 3, 4], m.vocab_size)
        first = 10 + int(feats.to(torch.float16).float().abs().sum().item() * 1000) % 37
        s = SamplingSettings(tokens_to_generate=8, greedy=True, repetition_penalty=1.0, end_strings=[], all_probs=True)
        out = m.generate(ids, feats, s)
        assert out.token_ids == [first, first + 1, first + 2] and out.finish_reason == "stop"
        assert out.logprobs == [-0.5] * 3
        seen = []
        assert m.generate(ids, feats, s, on_token=seen.append).token_ids == out.token_ids and seen == out.token_ids
        with pytest.raises(RuntimeError, match="TensorRT-LLM worker: ValueError: bad request"):
            m.generate(ids, feats, SamplingSettings(tokens_to_generate=13, greedy=True, end_strings=[]))
        stream = m.runner.generate([ids], prompt_table=None, end_id=2, pad_id=0, max_new_tokens=8, streaming=True,
                                   output_log_probs=False)
        next(stream)
        stream.close()  # a stream left half read does not disturb the next request
        assert m.generate(ids[:1], None, s).token_ids == [10, 11, 12]
    finally:
        m.runner.close()
    assert m.runner.proc.wait(30) == 0


def test_worker_load_errors_are_named(worker_env, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(BackendUnavailable, match="could not load .*bad: RuntimeError: engine built for another GPU"):
        WorkerRunner(sys.executable, bad)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "empty"))
    reason = llm_b.trtllm_unavailable_reason()
    assert f"tensorrt_llm does not import under {llm_b.PYTHON_ENV}={sys.executable}" in reason
    assert "No module named 'tensorrt_llm'" in reason
