"""NeMo-exact tokenization: every template's prompt, with its media span, against SentencePiece itself.

The reference is written here from NeMo's rules, not taken from the code under test: the media token
becomes START + PATCH × (n − 2) + END (neva_dataset.py preprocess_multimodal), the whole text goes
through one `SentencePieceProcessor.encode` call, and in legacy mode the text is cut at NeMo's added
tokens (earliest first, the first-added on a tie) with each piece encoded on its own
(sentencepiece_tokenizer.py text_to_ids).
"""
from __future__ import annotations

import pytest
from sentencepiece import SentencePieceProcessor
from sentencepiece_models import EXTRA_IDS, make_models

from videoneva import prompts
from videoneva.checkpoint.nemo_tokenizer import NemoSentencePieceTokenizer, build_sentencepiece_tokenizer
from videoneva.prompt_ids import nemo_media_spec
from videoneva.templates import TEMPLATES

N_MEDIA = 6
MEDIA_ID = 99_999
QUESTION = "Can you describe  the scene? It moves left."


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("sp"))


def reference_ids(sp: SentencePieceProcessor, text: str, added: dict[str, int], trim: bool) -> list[int]:
    """NeMo's text_to_ids: legacy cut at added tokens (earliest, then first added), else one encode call."""
    if not added:
        return sp.encode(text)
    ids, at = [], 0
    while True:
        hits = [(text.find(t, at), order, t) for order, t in enumerate(added) if text.find(t, at) != -1]
        if not hits:
            break
        pos, _, token = min(hits)
        part = sp.encode(text[at:pos])
        if trim and ids and ids[-1] in added.values() and part and part[0] == sp.piece_to_id("▁"):
            part = part[1:]
        ids += part + [added[token]]
        at = pos + len(token)
    return ids + sp.encode(text[at:])


def nemo_prompt_ids(sp, prompt: str, added: dict, trim: bool, template: str, model_type: str = "nvgpt"):
    """(ids, media positions) of a rendered prompt the way NeMo's inference builds them."""
    start, patch, end = (("<|reserved_special_token_4|>", "<|reserved_special_token_3|>",
                          "<|reserved_special_token_5|>") if model_type == "llama_3"
                         else ("<extra_id_4>", "<extra_id_3>", "<extra_id_5>"))
    media = "<video>"
    text = prompt.replace(media, start + patch * (N_MEDIA - 2) + end)
    ids = reference_ids(sp, text, added, trim)
    token_id = {**{sp.id_to_piece(i): i for i in range(sp.get_piece_size())}, **added}
    first = next(i for i in range(len(ids)) if ids[i] == token_id[start] and ids[i + N_MEDIA - 1] == token_id[end])
    if template in ("v1", "llama_2", "mistral"):  # neva_dataset.py preprocess_v1 / preprocess_llama_2
        swap = {token_id[patch]: 0, token_id["<extra_id_6>"]: 1, token_id["<extra_id_7>"]: 2}
        ids = [swap.get(t, t) for t in ids]
    return ids, list(range(first, first + N_MEDIA))


VARIANTS = {  # name: (model, tokenizer section of model_config.yaml, rules)
    "nvgpt, no legacy key": ("nvgpt", {"library": "sentencepiece"}, "2.1"),
    "neva llama_2, legacy false": ("neva", {"library": "sentencepiece", "sentencepiece_legacy": False}, "2.1"),
    "llama, NeMo adds extra_ids": ("llama_like", {"library": "sentencepiece", "additional_special_tokens": EXTRA_IDS},
                                   "2.1"),
    "llama, NeMo adds extra_ids, 2.2": ("llama_like", {"library": "sentencepiece",
                                                       "additional_special_tokens": EXTRA_IDS}, "2.2"),
    "nvgpt, in-vocab specials, 2.2": ("nvgpt", {"library": "sentencepiece", "additional_special_tokens": EXTRA_IDS},
                                      "2.2"),
}


def build(models, variant: str, template: str, model_type: str = "nvgpt", im_start_end: bool = False):
    name, tcfg, rules = VARIANTS[variant]
    tok = build_sentencepiece_tokenizer(models[name], tcfg, rules)
    tok.init_kwargs["nemo_media"] = nemo_media_spec(model_type, im_start_end, template)
    return tok


def expected_split(tok) -> dict[str, int]:
    return {t: i for t, i in tok.nemo_split_tokens} if tok.nemo_legacy else {}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_whole_prompt_matches_sentencepiece_id_for_id(models, variant, template):
    model_type = "llama_3" if template == "llama_3" else "nvgpt"
    if model_type == "llama_3" and VARIANTS[variant][0] != "nvgpt":
        pytest.skip("only the nvgpt-style model holds Llama-3's reserved media tokens")
    tok = build(models, variant, template, model_type)
    prompt = prompts.render_prompt(template, QUESTION, "video", "right")
    sp = SentencePieceProcessor(model_file=str(models[VARIANTS[variant][0]]))
    want, want_media = nemo_prompt_ids(sp, prompt, expected_split(tok), tok.nemo_trim_separator, template, model_type)
    got = prompts.tokenize_with_media(tok, prompt, N_MEDIA, MEDIA_ID, add_bos=False)
    assert got.media_positions == want_media
    assert [MEDIA_ID if i in want_media else t for i, t in enumerate(want)] == got.input_ids


def test_the_seed_prompt_keeps_sentencepiece_spaces(models):
    """The first ▁ before <extra_id_0> stays and no ▁ follows the media span (text after it is not re-encoded)."""
    tok = build(models, "nvgpt, no legacy key", "nvgpt")
    prompt = prompts.render_prompt("nvgpt", "Can you describe the scene?", "video", "right")
    tp = prompts.tokenize_with_media(tok, prompt, N_MEDIA, MEDIA_ID, add_bos=False)
    sp = tok.sp
    assert sp.id_to_piece(tp.input_ids[0]) == "▁" and sp.id_to_piece(tp.input_ids[1]) == "<extra_id_0>"
    after = tp.input_ids[tp.media_positions[-1] + 1:]
    assert [sp.id_to_piece(i) for i in after[:2]] == ["\n", "<extra_id_1>"]  # "\n<extra_id_1>", no "▁" first


def test_legacy_is_the_default_without_the_key_and_false_with_null(models):
    no_key = build_sentencepiece_tokenizer(models["llama_like"], {"additional_special_tokens": EXTRA_IDS})
    assert no_key.nemo_legacy and len(no_key) == no_key.sp.get_piece_size() + 8
    assert no_key.convert_tokens_to_ids("<extra_id_7>") == no_key.sp.get_piece_size() + 7  # appended in order
    assert not build_sentencepiece_tokenizer(models["nvgpt"], {"sentencepiece_legacy": None}).nemo_legacy
    with pytest.raises(ValueError, match="additional_special_tokens.*sentencepiece_legacy is false"):
        build_sentencepiece_tokenizer(models["llama_like"], {"sentencepiece_legacy": False,
                                                             "additional_special_tokens": EXTRA_IDS})


def test_use_im_start_end_keeps_start_and_end_as_text(models):
    tok = build(models, "nvgpt, no legacy key", "nvgpt", im_start_end=True)
    prompt = prompts.render_prompt("nvgpt", "Q", "video", "right")
    tp = prompts.tokenize_with_media(tok, prompt, N_MEDIA, MEDIA_ID, add_bos=False)
    first, last = tp.media_positions[0], tp.media_positions[-1]
    assert last - first == N_MEDIA - 1
    assert tok.convert_ids_to_tokens([tp.input_ids[first - 1], tp.input_ids[last + 1]]) == ["<extra_id_4>",
                                                                                              "<extra_id_5>"]


def test_llama_2_rewrites_bos_and_eos_tokens(models):
    tok = build(models, "neva llama_2, legacy false", "mistral")
    tp = prompts.tokenize_with_media(tok, prompts.render_prompt("mistral", "Q", "video", "right"), N_MEDIA, MEDIA_ID,
                                     add_bos=False)
    # SentencePiece's dummy "▁", then "<extra_id_6>" as Llama's <s> (id 1), as NeMo's preprocess_llama_2 does
    assert tp.input_ids[:2] == [tok.sp.piece_to_id("▁"), 1] and 1 not in tp.input_ids[2:]


def test_save_load_decode_and_training_labels(models, tmp_path):
    from videoneva.checkpoint.native import load_tokenizer

    tok = build(models, "llama, NeMo adds extra_ids", "nvgpt")
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, NemoSentencePieceTokenizer) and again.init_kwargs["nemo_media"]["patch"] == "<extra_id_3>"
    text, spans = prompts.render_conversation("nvgpt", [{"from": "human", "value": "<video>\nWhat color?"},
                                                        {"from": "gpt", "value": "A red one."}], "video")
    a = prompts.tokenize_with_media(tok, text, N_MEDIA, MEDIA_ID, add_bos=False, spans=spans)
    b = prompts.tokenize_with_media(again, text, N_MEDIA, MEDIA_ID, add_bos=False, spans=spans)
    assert a == b
    answer = [t for t, lab in zip(a.input_ids, a.labels) if lab != prompts.IGNORE_INDEX]
    assert again.decode(answer) == "A red one.\n<extra_id_1>"
    plain = "<extra_id_0>System\nSome text.<extra_id_1>User\n"
    assert again.decode(again(plain, add_special_tokens=False)["input_ids"]) == plain
