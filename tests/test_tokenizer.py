"""The byte-level BPE tokenizer: exact round trip, special tokens stay single ids, save/load."""
from __future__ import annotations

from transformers import AutoTokenizer

from videoneva import prompts


def test_round_trip_and_specials(tiny_tokenizer):
    text = "<extra_id_0>System\nÜnïcode ✓ text <video>\n  two  spaces<extra_id_1>"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert tiny_tokenizer.decode(ids) == text
    for tok in prompts.special_tokens("nv_steerlm") + prompts.special_tokens("llama_3"):
        assert len(tiny_tokenizer.encode(tok, add_special_tokens=False)) == 1, tok
    assert tiny_tokenizer.bos_token == "<extra_id_6>" and tiny_tokenizer.eos_token == "<extra_id_7>"


def test_save_and_load(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    s = "What color is the shape? <image>"
    assert again.encode(s, add_special_tokens=False) == tiny_tokenizer.encode(s, add_special_tokens=False)
