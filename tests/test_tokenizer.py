"""The byte-level BPE tokenizer: exact round trip, special tokens stay single ids, save/load."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from videoneva import prompts
from videoneva.templates import TEMPLATES
from videoneva.tokenizer import train_tokenizer

TEXTS = ["<extra_id_0>System\nÜnïcode ✓ text <video>\n  two  spaces<extra_id_1>",
         "\ttabs, trailing space \n\n", "emoji 🤖 and 中文 never seen in training", " leading space", ""]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert tiny_tokenizer.decode(ids) == text


def test_special_tokens_stay_single_ids(tiny_tokenizer):
    for name in TEMPLATES:
        for tok in prompts.special_tokens(name):
            ids = tiny_tokenizer.encode(f"a{tok}b", add_special_tokens=False)
            assert len(ids) == 3 and tiny_tokenizer.convert_ids_to_tokens(ids[1]) == tok, (name, tok)
    assert tiny_tokenizer.bos_token == "<extra_id_6>" and tiny_tokenizer.eos_token == "<extra_id_7>"
    assert tiny_tokenizer.pad_token == "<pad>" and tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    # "<image>"/"<video>" are always added, even when the caller lists no specials.
    tok = train_tokenizer(["a b c"], vocab_size=300, special_tokens=[])
    assert len(tok.encode("<video><image>", add_special_tokens=False)) == 2


def test_save_and_load(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    s = "<extra_id_0>System\nWhat color is the shape? <image>\n<extra_id_1>Assistant\n"
    assert again.encode(s, add_special_tokens=False) == tiny_tokenizer.encode(s, add_special_tokens=False)
    assert again.decode(again.encode(s, add_special_tokens=False)) == s
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (
        tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id)
    assert len(again) == len(tiny_tokenizer)


def test_llama_3_vocabulary_and_size_check():
    tok = train_tokenizer(["hello world"] * 5, vocab_size=300, special_tokens=prompts.special_tokens("llama_3"),
                          bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|eot_id|>"
    with pytest.raises(ValueError, match="vocab_size must be >= 2"):
        train_tokenizer(["x"], vocab_size=100, special_tokens=[])
