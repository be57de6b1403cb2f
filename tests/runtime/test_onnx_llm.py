"""The ONNX Runtime LLM (llm.backend=onnx) generates what the torch LLM generates, through the same loop."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from engine_build.llm import extract_causal_lm
from engine_build.llm_onnx import export_llm_onnx
from videoneva.errors import CheckpointError, ConfigError
from videoneva.generation import SamplingSettings
from videoneva.runtime.onnx_backend import LLM_EMBEDDINGS, OnnxLanguageModel
from videoneva.runtime.torch_backend import TorchLanguageModel

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def pair(tiny_checkpoint, tiny_tokenizer, tmp_path_factory):
    """(torch LLM, ONNX Runtime LLM, export info) of the tiny checkpoint's language model."""
    llava = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    lm = extract_causal_lm(llava)
    out = tmp_path_factory.mktemp("llm_onnx")
    info = export_llm_onnx(lm, out)
    image_id = llava.config.image_token_id
    return (TorchLanguageModel(lm, tiny_tokenizer, image_id),
            OnnxLanguageModel(out, lm.config, tiny_tokenizer, image_id, threads=1), info, out)


def _prompt(llm, n_media=24):
    """ids with a run of media ids (≥ vocab_size) in the middle, and a prompt table for them."""
    g = torch.Generator().manual_seed(3)
    head = torch.randint(10, llm.vocab_size, (9,), generator=g).tolist()
    tail = torch.randint(10, llm.vocab_size, (5,), generator=g).tolist()
    ids = head + [llm.vocab_size + k for k in range(n_media)] + tail
    table = torch.randn(n_media, llm.hidden_size, generator=g) * 0.05
    return ids, table


def test_export_is_checked_at_several_prompt_and_cache_lengths(pair):
    _, _, info, out = pair
    assert info["max_abs_diff"] < 1e-4
    cases = [tuple(c) for c in info["check"]]  # (S, P, rows, holes)
    assert any(p == 0 for _, p, _, _ in cases) and any(s == 1 for s, _, _, _ in cases)  # prefill and step
    assert any(rows > 1 and holes > 0 for _, _, rows, holes in cases)  # a ragged batch
    assert (out / LLM_EMBEDDINGS).is_file()


def test_onnx_runtime_generates_what_torch_generates(pair):
    torch_llm, onnx_llm, _, _ = pair
    ids, table = _prompt(torch_llm)
    cases = [
        SamplingSettings(max_tokens=12, greedy=True, repetition_penalty=1.0, end_strings=[]),
        SamplingSettings(max_tokens=12, greedy=True, repetition_penalty=1.5, end_strings=[]),
        SamplingSettings(max_tokens=10, greedy=False, temperature=0.7, top_k=20, top_p=0.9,
                         repetition_penalty=1.2, min_tokens=3, seed=5, end_strings=[]),
        SamplingSettings(max_tokens=1, greedy=True, repetition_penalty=1.0, end_strings=[]),
    ]
    for sampling in cases:
        sampling.return_log_probs = True
        a, b = torch_llm.generate(ids, table, sampling), onnx_llm.generate(ids, table, sampling)
        assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason, sampling
        assert b.token_ids or b.finish_reason == "stop"
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), rtol=1e-4, atol=1e-4)
    assert onnx_llm.generate(ids, table, dataclasses.replace(cases[0], max_tokens=0)).token_ids == []


def test_stops_and_streaming_are_those_of_torch(pair):
    torch_llm, onnx_llm, _, _ = pair
    ids, table = _prompt(torch_llm)
    greedy = SamplingSettings(max_tokens=12, greedy=True, repetition_penalty=1.0, end_strings=[])
    free = torch_llm.generate(ids, table, greedy).token_ids
    tok = torch_llm.tokenizer
    stop = next(tok.decode([i]) for i in free[2:] if tok.encode(tok.decode([i]), add_special_tokens=False) == [i])
    sampling = dataclasses.replace(greedy, end_strings=[stop])
    seen: list[int] = []
    a = torch_llm.generate(ids, table, sampling)
    b = onnx_llm.generate(ids, table, sampling, on_token=seen.append)
    assert b.finish_reason == a.finish_reason == "stop" and b.token_ids == a.token_ids and len(b.token_ids) < len(free)
    assert seen[: len(b.token_ids)] == b.token_ids and len(seen) == len(b.token_ids) + 1  # + the stop id


def test_bad_prompt_table_and_missing_files_are_named(pair, tmp_path, tiny_tokenizer):
    torch_llm, onnx_llm, _, out = pair
    ids, table = _prompt(torch_llm)
    greedy = SamplingSettings(max_tokens=2, greedy=True, end_strings=[])
    with pytest.raises(ValueError, match="outside the prompt table"):
        onnx_llm.generate(ids, table[:5], greedy)
    with pytest.raises(CheckpointError, match="llm.onnx, embed_tokens.safetensors"):
        OnnxLanguageModel(tmp_path, torch_llm.model.config, tiny_tokenizer, 5)


def test_only_a_float32_llm_is_exported(tiny_checkpoint, tmp_path):
    lm = extract_causal_lm(LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()).half()
    with pytest.raises(ConfigError, match="float32"):
        export_llm_onnx(lm, tmp_path)


def test_a_sliding_window_llm_is_refused(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    lm = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=1, sliding_window=16))
    with pytest.raises(ConfigError, match="sliding_window=16"):
        export_llm_onnx(lm, tmp_path)


def test_end_string_memos_stay_bounded(pair):
    """Requests choose their end strings; what the loop remembers about them stays bounded."""
    from videoneva.runtime.torch_backend import MEMO_SIZE

    torch_llm, _, _, _ = pair
    ids, table = _prompt(torch_llm)
    first = None
    for i in range(MEMO_SIZE + 6):
        s = SamplingSettings(max_tokens=2, greedy=True, end_strings=[f"zq{i}x"])
        out = torch_llm.generate(ids, table, s).token_ids
        first = out if first is None else first
        assert out == first  # end strings never produced: the same answer each time
    assert 0 < len(torch_llm._end_split) <= MEMO_SIZE


def test_a_graph_of_the_older_layout_is_refused_by_name(pair, tmp_path, tiny_tokenizer):
    """An engine directory whose llm.onnx takes the whole cache as two tensors is refused with 'rebuild'."""
    import shutil

    import onnx
    from onnx import TensorProto, helper

    torch_llm, _, _, out = pair
    names = ("inputs_embeds", "past_keys", "past_values", "attention_mask", "position_ids")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["inputs_embeds"], ["logits"])], "old",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "llm.onnx"))
    shutil.copy(out / LLM_EMBEDDINGS, tmp_path / LLM_EMBEDDINGS)
    with pytest.raises(CheckpointError, match=r"inputs \['inputs_embeds', 'past_keys'.*rebuild the engine directory"):
        OnnxLanguageModel(tmp_path, torch_llm.model.config, tiny_tokenizer, 5)
