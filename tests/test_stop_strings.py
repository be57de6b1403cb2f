"""End strings stop generation with every tokenizer model type, at the token that completes them."""
from __future__ import annotations

import pytest
import torch
from tokenizer_kinds import KINDS, TEXTS, train
from transformers import LlamaConfig, LlamaForCausalLM

from videoneva.generation import SamplingSettings, StopStrings, split_end_strings
from videoneva.runtime.torch_backend import TorchLanguageModel

SPECIALS = ["<extra_id_1>", "<image>", "<video>"]
TEXT = "The video shows two shapes. How many shapes are there? The answer is 2."


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request):
    return train(request.param, TEXTS + ["naïve café 🙂 ok"], SPECIALS)


def first_stop(tok, ids: list[int], ends: list[str]):
    """Index of the token at which StopStrings fires (None if never)."""
    m = StopStrings(tok, ends)
    return next((i for i, t in enumerate(ids) if m.add(t)), None)


@pytest.mark.parametrize("end", ["two", "s. H", "there?", "o s", "answer is 2.", "shapes"])
def test_stops_at_the_first_token_whose_text_holds_the_end_string(tokenizer, end):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    text = tokenizer.decode(ids)
    if end not in text:  # a word-level tokenizer spaces out punctuation: "shapes ." holds no "s. H"
        assert first_stop(tokenizer, ids, [end]) is None
        return
    k = first_stop(tokenizer, ids, [end])
    assert k is not None
    assert end in tokenizer.decode(ids[: k + 1]) and end not in tokenizer.decode(ids[:k])


def test_end_strings_outside_the_vocabulary_and_special_tokens(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert first_stop(tokenizer, ids, ["\n\n", "§", "zzz"]) is None  # never generated: no stop, no error
    marker = tokenizer.convert_tokens_to_ids("<extra_id_1>")
    with_marker = ids[:3] + [marker] + ids[3:]
    k = first_stop(tokenizer, with_marker, ["<extra_id_1>"])
    assert k == 3


def test_multi_byte_characters_split_over_byte_tokens():
    tok = train("bpe", TEXTS, SPECIALS)
    ids = tok.encode("a café 🙂 ok then", add_special_tokens=False)
    assert len(ids) > len("a café 🙂 ok then".split())  # the emoji's four bytes are separate tokens here
    k = first_stop(tok, ids, ["🙂 ok"])
    assert "🙂 ok" in tok.decode(ids[: k + 1]) and "🙂 ok" not in tok.decode(ids[:k])


def _tiny_lm(tok) -> TorchLanguageModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return TorchLanguageModel(LlamaForCausalLM(cfg).eval(), tok, media_token_id=tok.convert_tokens_to_ids("<image>"))


def test_the_decode_loop_stops_on_text_end_strings(tokenizer):
    """The real decode loop with end strings taken from what the model generates freely."""
    llm = _tiny_lm(tokenizer)
    ids = tokenizer.encode("How many shapes are there?", add_special_tokens=False)
    greedy = SamplingSettings(max_tokens=24, min_tokens=24, greedy=True, repetition_penalty=1.0,
                              end_strings=["\n\n", "§ never"])  # not in the vocabulary: no error, no stop
    free = llm.generate(ids, None, greedy)
    assert free.finish_reason == "length" and len(free.token_ids) == 24
    text = tokenizer.decode(free.token_ids)
    ends = [tokenizer.decode(free.token_ids[i:i + 2]) for i in range(2, 12)]
    end = next((e for e in ends if len(e.strip()) > 1 and split_end_strings(tokenizer, [e])[1] and e in text), None)
    assert end is not None, ends
    out = llm.generate(ids, None, SamplingSettings(max_tokens=24, min_tokens=24, greedy=True,
                                                   repetition_penalty=1.0, end_strings=[end]))
    assert out.finish_reason == "stop" and out.token_ids == free.token_ids[: len(out.token_ids)]
    done = tokenizer.decode(out.token_ids)
    assert end in done and end not in tokenizer.decode(out.token_ids[:-1])
