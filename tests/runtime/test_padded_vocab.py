"""Vocabulary rows past the tokenizer (NeMo's make_vocab_size_divisible_by padding) are never generated."""
from __future__ import annotations

import pytest
import torch

from videoneva.generation import SamplingSettings
from videoneva.runtime.torch_backend import TorchLanguageModel

EXTRA = 64


@pytest.fixture(scope="module")
def padded(tiny_tokenizer):
    """The tiny model with 64 padded rows whose logits beat every real token's."""
    from dataclasses import replace

    from videoneva.model.factory import TINY, new_llava

    n = len(tiny_tokenizer)
    model = new_llava(replace(TINY, vocab_size=n, image_size=56), tiny_tokenizer.convert_tokens_to_ids("<image>"),
                      eos_token_id=tiny_tokenizer.eos_token_id, seed=3)
    model.resize_token_embeddings(n + EXTRA, mean_resizing=False)
    with torch.no_grad():
        model.lm_head.weight[n:] = 50 * model.lm_head.weight[:EXTRA].sign()  # large logits at padded ids
    return model.eval()


@pytest.mark.parametrize("greedy", [True, False])
def test_padded_ids_are_never_emitted(padded, tiny_tokenizer, greedy):
    n = len(tiny_tokenizer)
    ids = tiny_tokenizer("What color is the shape?", add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # unmasked, the model prefers the padded rows: the mask is what keeps them out
        raw = padded(input_ids=torch.tensor([ids])).logits[0, -1]
    assert int(raw.argmax()) >= n
    llm = TorchLanguageModel(padded, tiny_tokenizer)
    sampling = SamplingSettings(greedy=greedy, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                max_tokens=24, end_strings=[], seed=5, return_log_probs=True)
    out = llm.generate(ids, None, sampling)
    assert out.token_ids and max(out.token_ids) < n
    assert all(lp > -1e9 for lp in out.logprobs)  # chosen among real tokens, probabilities over real tokens
