"""In-flight batching on CPU: many requests decoded in one batch give what each gets alone."""
from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from videoneva.errors import PromptError
from videoneva.runtime.batching import BatchingLanguageModel, Cancelled
from videoneva.schema import SamplingSettings


@pytest.fixture(scope="module", params=["torch", "onnx"])
def llm(request, tiny_checkpoint, tmp_path_factory):
    """The tiny model's LLM on the torch backend and as the exported ONNX Runtime graph."""
    from videoneva.checkpoint.native import load_checkpoint
    from videoneva.runtime.torch_backend import TorchLanguageModel

    ckpt = load_checkpoint(tiny_checkpoint, precision="32")
    torch_llm = TorchLanguageModel(ckpt.model, ckpt.tokenizer)
    if request.param == "torch":
        return torch_llm
    from engine_build.llm import extract_causal_lm
    from engine_build.llm_onnx import export_llm_onnx
    from videoneva.runtime.onnx_backend import OnnxLanguageModel

    out = tmp_path_factory.mktemp("llm_onnx")
    export_llm_onnx(extract_causal_lm(ckpt.model), out)
    return OnnxLanguageModel(out, ckpt.model.config.text_config, ckpt.tokenizer, ckpt.model.config.image_token_id, threads=1)


def _requests(llm, n=8):
    """n prompts of different lengths, some with a media table, with different settings each."""
    g = torch.Generator().manual_seed(0)
    tok = llm.tokenizer
    out = []
    for i in range(n):
        ids = tok.encode("What color is the shape? " * (1 + i % 3), add_special_tokens=False)[: 6 + 3 * i]
        table = None
        if i % 2:
            table = torch.randn(4 + i, llm.hidden_size, generator=g)
            ids = ids[:2] + [llm.vocab_size + k for k in range(table.shape[0])] + ids[2:]
        s = SamplingSettings(max_tokens=4 + 3 * i, greedy=True, repetition_penalty=1.0 + 0.1 * (i % 3),
                             end_strings=["circle"] if i == 3 else [], return_log_probs=i % 4 == 1)
        if i in (5, 6):  # seeded samples: the same draws whoever shares the step
            s = dataclasses.replace(s, greedy=False, temperature=0.9, top_k=20, seed=100 + i)
        out.append((ids, table, s))
    return out


def test_a_batch_of_eight_gives_what_each_gets_alone(llm):
    reqs = _requests(llm)
    alone = [llm.generate(ids, table, s) for ids, table, s in reqs]
    ex = BatchingLanguageModel(llm, max_batch_size=8)
    try:
        streamed = [[] for _ in reqs]
        order = []
        handles = ex.submit_many([(ids, table, s, (lambda t, i=i: (streamed[i].append(t), order.append(i))))
                                  for i, (ids, table, s) in enumerate(reqs)])
        together = [h.result(120) for h in handles]
    finally:
        ex.close()
    for a, b, s in zip(alone, together, streamed):
        assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason
        assert s[: len(b.token_ids)] == b.token_ids
        if a.logprobs is not None:
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), rtol=1e-4, atol=1e-4)
    assert max(ex.stats.batch_sizes) == 8 and ex.stats.step_sequences > ex.stats.steps
    assert len(set(order[:16])) > 1, "the streamed tokens of different requests interleave"


def test_requests_arriving_while_others_run_join_the_batch(llm):
    reqs = _requests(llm, 6)
    alone = [llm.generate(ids, table, s) for ids, table, s in reqs]
    ex = BatchingLanguageModel(llm, max_batch_size=3)
    try:
        first = threading.Event()
        results = [None] * len(reqs)

        def ask(i):
            ids, table, s = reqs[i]
            results[i] = ex.generate(ids, table, s, on_token=lambda _t: first.set())

        threads = [threading.Thread(target=ask, args=(0,))]
        threads[0].start()
        assert first.wait(60)  # request 0 is generating: the rest join it between steps
        threads += [threading.Thread(target=ask, args=(i,)) for i in range(1, len(reqs))]
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        ex.close()
    assert [r.token_ids for r in results] == [a.token_ids for a in alone]
    assert max(ex.stats.batch_sizes) <= 3


def test_a_cancelled_request_leaves_and_the_others_finish(llm):
    reqs = _requests(llm, 4)
    long = dataclasses.replace(reqs[0][2], max_tokens=60, min_tokens=60)
    cancel_at = threading.Event()
    ex = BatchingLanguageModel(llm, max_batch_size=4)
    try:
        def on_token(_t, seen=[]):
            seen.append(_t)
            if len(seen) == 3:
                cancel_at.set()

        handles = ex.submit_many([(reqs[0][0], reqs[0][1], long, on_token)] + reqs[1:])
        assert cancel_at.wait(60)
        handles[0].cancel()
        with pytest.raises(Cancelled):
            handles[0].result(60)
        others = [h.result(120) for h in handles[1:]]
    finally:
        ex.close()
    assert all(o.token_ids for o in others) and ex.stats.cancelled == 1
    assert ex.active == 0 and ex.kv_tokens == 0  # every row freed


def test_the_kv_budget_queues_and_refuses(llm):
    reqs = _requests(llm, 3)
    need = max(len(ids) + s.max_tokens for ids, _t, s in reqs)
    ex = BatchingLanguageModel(llm, max_batch_size=8, max_kv_tokens=need)  # room for one row at a time
    try:
        outs = [h.result(120) for h in ex.submit_many(reqs)]
        with pytest.raises(PromptError, match="KV budget"):
            ex.submit(reqs[0][0], None if reqs[0][1] is None else reqs[0][1],
                      dataclasses.replace(reqs[0][2], max_tokens=need + 1))
    finally:
        ex.close()
    assert all(o.token_ids for o in outs) and max(ex.stats.batch_sizes) == 1


def test_a_reused_media_prefix_gives_what_a_whole_prefill_gives(llm):
    """Questions about the same media prefill only what follows it; other media with the same fake ids never
    share its cache."""
    g = torch.Generator().manual_seed(7)
    tok = llm.tokenizer
    head = tok.encode("User:", add_special_tokens=False)
    media = [llm.vocab_size + k for k in range(6)]
    tables = {key: torch.randn(6, llm.hidden_size, generator=g) for key in ("video-a", "video-b")}
    questions = [tok.encode(q, add_special_tokens=False) for q in ("What color?", "How many shapes are there?", "Why")]
    s = SamplingSettings(max_tokens=6, greedy=True, repetition_penalty=1.2, end_strings=[], return_log_probs=True)
    order = [("video-a", 0), ("video-a", 1), ("video-b", 1), ("video-a", 2), ("video-b", 0)]
    ex = BatchingLanguageModel(llm, max_batch_size=4, prefix_cache_bytes=1 << 24)
    try:
        got = [ex.submit(head + media + questions[q], tables[key], s, media_key=key).result(120) for key, q in order]
    finally:
        ex.close()
    for (key, q), out in zip(order, got):
        alone = llm.generate(head + media + questions[q], tables[key], s)
        assert out.token_ids == alone.token_ids, (key, q)
        torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(alone.logprobs), rtol=1e-4, atol=1e-4)
    assert ex.stats.prefix_hits == 3  # the second and third question about a, the second about b
    assert got[1].token_ids != got[2].token_ids or got[1].logprobs != got[2].logprobs  # b is not a's cache
