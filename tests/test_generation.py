"""Sampling settings → transformers generation: greedy/sampling knobs, end strings, min/max tokens, BOS."""
from __future__ import annotations

from videoneva.config import InferConfig, load_config
from videoneva.generation import SamplingSettings, generation_config, split_end_strings, trim_at_end_strings
from videoneva.runtime.loader import build_pipeline
from videoneva.runtime.pipeline import Request


def test_settings_map_to_generation_config(tiny_tokenizer):
    gc = generation_config(SamplingSettings(greedy=False, temperature=0.2, top_k=0, top_p=0.9,
                                            repetition_penalty=1.2, max_tokens=256), tiny_tokenizer)
    assert gc.do_sample and gc.temperature == 0.2 and gc.top_k == 0 and gc.top_p == 0.9  # 0: off, not 50
    assert gc.repetition_penalty == 1.2 and gc.max_new_tokens == 256
    greedy = generation_config(SamplingSettings(greedy=True, top_k=5), tiny_tokenizer)
    assert not greedy.do_sample and greedy.top_k is None


def test_end_strings_split_into_ids_and_texts(tiny_tokenizer):
    ids, texts = split_end_strings(tiny_tokenizer, ["<extra_id_1>", "<extra_id_7>", "STOP here"])
    assert tiny_tokenizer.convert_tokens_to_ids("<extra_id_1>") in ids
    assert tiny_tokenizer.eos_token_id in ids and texts == ["STOP here"]
    assert trim_at_end_strings("abc<extra_id_1>def", ["<extra_id_1>"]) == ("abc", "<extra_id_1>")
    assert trim_at_end_strings("abc", ["x"]) == ("abc", None)


def _pipe(ckpt, media, *extra):
    return build_pipeline(load_config(InferConfig, [f"neva_model_file={ckpt}", f"inference.media_base_path={media}",
                                                    "inference.insert_media_token=right", *extra]))


def test_min_and_max_tokens_are_honoured(tiny_checkpoint, media_dir):
    pipe = _pipe(tiny_checkpoint, media_dir)
    req = Request("What color?", "video", "clip.mp4")
    out = pipe.answer(req, SamplingSettings(max_tokens=5, min_tokens=5, greedy=True,
                                            end_strings=["<extra_id_1>"]))
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


def test_add_bos_prepends_the_bos_token(tiny_checkpoint, media_dir):
    with_bos = _pipe(tiny_checkpoint, media_dir, "inference.add_BOS=true")
    without = _pipe(tiny_checkpoint, media_dir)
    ids_a = with_bos.front.tokenize("hello <video>", 4)
    ids_b = without.front.tokenize("hello <video>", 4)
    assert ids_a[0] == with_bos.tokenizer.bos_token_id and ids_a[1:] == ids_b
