"""One request flow, two stage sets: the in-process pipeline and the Triton models wired together in
one process (each model's handler, made from the repository `serve` renders, no server) give the
same answers, media reports and streamed pieces."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from videoneva.config import InferConfig, load_config
from videoneva.runtime.detok import IncrementalDetokenizer
from videoneva.runtime.engine import pipeline_from_engine_dir
from videoneva.schema import Answer, Request, RequestError, SamplingSettings
from videoneva.serving.client import Client
from videoneva.serving.models import feature_cache, llm, preprocess, videoneva, vision_encoder

MODULES = {"videoneva": videoneva, "feature_cache": feature_cache, "preprocess": preprocess,
           "vision_encoder": vision_encoder, "llm": llm}
INSERT = "left"


class _Call:
    def __init__(self, sent: list):
        self.sent = sent

    def send(self, tensors):
        self.sent.append(tensors)

    def cancelled(self) -> bool:
        return False


class InProcessBLS:
    """BLS calls answered by the handlers themselves, with copies as the stub's shared memory makes."""

    def __init__(self):
        self.handlers, self.calls = {}, []

    def call(self, model, tensors):
        self.calls.append(model)
        return self.handlers[model]({k: np.array(v, copy=True) for k, v in tensors.items()}, _Call([]))

    def stream(self, model, tensors, barrier):
        self.calls.append(model)
        sent = []
        final = self.handlers[model]({k: np.array(v, copy=True) for k, v in tensors.items()}, _Call(sent))
        yield from sent
        yield final


def _params(repo, name) -> dict[str, str]:
    text = (repo / name / "config.pbtxt").read_text()
    params = dict(re.findall(r'parameters: \{ key: "(\w+)", value: \{ string_value: "((?:[^"\\]|\\.)*)" \} \}', text))
    params = {k: json.loads(f'"{v}"') for k, v in params.items()}  # pbtxt string escapes are JSON's here
    params["max_batch_size"] = re.search(r"max_batch_size: (\d+)", text).group(1)
    return params


@pytest.fixture(scope="module")
def wired(engine_dir, media_dir, tmp_path_factory):
    """(entry handler, the BLS that counts calls), built from the repository `serve` renders."""
    from videoneva.serving.serve import ServeConfig, render

    cfg = load_config(ServeConfig, [f"engine_dir={engine_dir}", f"media_root={media_dir}", "threads=1",
                                    "max_num_frames=6", "inference.tokens_to_generate=16", "stream_interval_ms=0"])
    repo = render(cfg, tmp_path_factory.mktemp("repo") / "r")
    bls = InProcessBLS()
    for name, module in MODULES.items():
        bls.handlers[name] = module.make(_params(repo, name), bls)
    return bls.handlers["videoneva"], bls


@pytest.fixture(scope="module")
def local(engine_dir, media_dir):
    cfg = load_config(InferConfig, [f"engine_dir={engine_dir}", f"inference.media_base_path={media_dir}", "device=cpu"])
    return pipeline_from_engine_dir(engine_dir, cfg)


def _triton(wired, text, stream=False, **kw) -> tuple[Answer, list]:
    entry, _ = wired
    sent = []
    out = entry(Client.inputs(text, stream=stream, insert_media_token=INSERT, greedy=True, repetition_penalty=1.0,
                              max_tokens=12, **kw), _Call(sent))
    answer = Answer.from_dict(json.loads(out["result_json"][0].decode()))
    assert out["text_output"][0].decode() == answer.clean_response
    pieces = [(p["text_output"][0].decode(), p["output_ids"].tolist()) for p in sent]
    return answer, pieces


def _local(pipe, text, stream=False, **kw) -> tuple[Answer, list]:
    pieces = []
    req = Request(text, insert_media_token=INSERT, **kw)
    sampling = SamplingSettings(max_tokens=12, greedy=True, repetition_penalty=1.0)
    on_delta = (lambda d: pieces.append((d.text, d.token_ids))) if stream else None
    return pipe.answer(req, sampling, on_delta), pieces


def _same(a: Answer, b: Answer) -> None:
    for f in ("prompt", "raw_response", "clean_response", "token_ids", "finish_reason", "media", "usage", "model_id"):
        assert getattr(a, f) == getattr(b, f), f
    assert a.timings.keys() == b.timings.keys()


def test_a_miss_then_a_hit_then_a_digest_alone_answer_alike(wired, local, media_dir):
    data = (media_dir / "clip.webm").read_bytes()
    _, bls = wired
    for expect in ("miss", "hit"):
        bls.calls.clear()
        got, _ = _triton(wired, "What is in it?", media_type="video", media_bytes=data)
        want, _ = _local(local, "What is in it?", media_type="video", media_bytes=data)
        assert got.media["cache"] == want.media["cache"] == expect
        _same(got, want)
        if expect == "miss":
            assert bls.calls == ["feature_cache", "preprocess", "vision_encoder", "feature_cache", "llm"]
            assert got.timings["decode_s"] is not None and got.timings["encode_s"] is not None
        else:  # a hit decodes nothing and makes no preprocess call
            assert bls.calls == ["feature_cache", "llm"]
            assert got.timings["decode_s"] is None and got.timings["encode_s"] is None
    from videoneva.media import media_digest

    got, _ = _triton(wired, "And now?", media_type="video", media_digest=media_digest(data))
    want, _ = _local(local, "And now?", media_type="video", media_digest=media_digest(data))
    assert got.media["cache"] == "hit"
    _same(got, want)


def test_streamed_pieces_are_the_same_and_make_the_answer(wired, local, media_dir):
    for kw in ({"media_type": "video", "media_path": "clip.mp4"}, {"media_type": "image", "media_path": "still.png"}, {}):
        got, got_pieces = _triton(wired, "Describe it.", stream=True, **kw)
        want, want_pieces = _local(local, "Describe it.", stream=True, **kw)
        _same(got, want)
        assert got_pieces == want_pieces
        assert "".join(t for t, _ in got_pieces) == got.raw_response
        assert [i for _, ids in got_pieces for i in ids][: len(got.token_ids)] == got.token_ids


def test_a_conversation_answers_alike_and_renders_with_the_template(wired, local, media_dir):
    """`messages` (system, an earlier round with the video) goes over the wire as JSON and is rendered
    by the template on both stage sets; the video is not inserted a second time."""
    history = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "<video>What moves?"},
               {"role": "assistant", "content": "A circle."}]
    got, _ = _triton(wired, "Where to?", media_type="video", media_path="clip.mp4", messages=history)
    want, _ = _local(local, "Where to?", media_type="video", media_path="clip.mp4", messages=history)
    _same(got, want)
    assert got.prompt.count("<video>") == 1 and "Answer briefly." in got.prompt and "A circle." in got.prompt
    assert "A circle.\n<extra_id_1>User\nWhere to?\n<extra_id_1>Assistant\n" in got.prompt


def test_per_request_frames_change_the_features_and_the_cache_key(wired, local, media_dir):
    data = (media_dir / "clip.mp4").read_bytes()
    base, _ = _triton(wired, "Frames?", media_type="video", media_bytes=data)
    two, _ = _triton(wired, "Frames?", media_type="video", media_bytes=data, num_frames=2)
    one, _ = _triton(wired, "Frames?", media_type="video", media_bytes=data, splice_single_frame="middle")
    assert (base.media["num_frames"], two.media["num_frames"], one.media["num_frames"]) == (4, 2, 1)
    assert len({base.media["content_hash"], two.media["content_hash"], one.media["content_hash"]}) == 3
    assert two.media["cache"] == "miss" and two.usage["media_tokens"] == 2 * 64
    _same(two, _local(local, "Frames?", media_type="video", media_bytes=data, num_frames=2)[0])


def test_refusals_name_the_input(wired, media_dir):
    entry, _ = wired
    data = (media_dir / "clip.mp4").read_bytes()
    with pytest.raises(RequestError, match=r"num_frames.*1\.\.6"):
        _triton(wired, "q", media_type="video", media_bytes=data, num_frames=7)
    with pytest.raises(RequestError, match="splice_single_frame"):
        _triton(wired, "q", media_type="video", media_bytes=data, splice_single_frame="centre")
    with pytest.raises(RequestError, match="MEDIA_NOT_CACHED"):
        _triton(wired, "q", media_type="video", media_digest="ab" * 32)
    tensors = Client.inputs("q", media_type="video", media_bytes=data, media_digest="0" * 64)
    with pytest.raises(RequestError, match="not the sha256"):
        entry(tensors, _Call([]))


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece"])
def test_incremental_text_equals_the_whole_decode(kind):
    """Pieces, joined, are what decoding every id at once gives (byte-level BPE, SentencePiece-style
    Unigram with its leading spaces, WordPiece with its ## continuations); end strings never show."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["héllo wörld, the shape moves left", "ünïcode 😀 emoji and ｆｕｌｌｗｉｄｔｈ", "STOP here please"] * 20
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=200, unk_token="<unk>", special_tokens=["<unk>"])
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer, tok.pre_tokenizer = normalizers.NFC(), pre_tokenizers.Whitespace()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]"])
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    ids = hf.encode("héllo wörld 😀 the shape moves left STOP here", add_special_tokens=False)
    full = hf.decode(ids, skip_special_tokens=False)
    for ends in ([], ["STOP"]):
        detok = IncrementalDetokenizer(hf, ends)
        pieces = [detok.push([i]) for i in ids]
        shown = "".join(pieces)
        answer = full[: full.find("STOP")] if ends else full
        assert answer.startswith(shown) and not (ends and "STOP" in shown)
        assert shown + detok.finish(answer) == answer
    # the fallback for tokenizers without a `tokenizers` backend: a decode window
    fallback = dataclasses.make_dataclass("Plain", [])()
    fallback.decode = hf.decode
    detok = IncrementalDetokenizer(fallback, [])
    assert "".join(detok.push([i]) for i in ids) + (detok.finish(full) or "") == full


def test_a_question_without_a_media_token_gets_the_media_where_the_model_was_trained(wired, engine_dir, tmp_path):
    """The server places media by the checkpoint's recorded convention (left when none is recorded);
    a request's own insert_media_token wins."""
    import shutil

    from videoneva.runtime.engine import engine_front
    from videoneva.runtime.engine_dir import EngineDir

    entry, _ = wired
    sent = []
    out = entry(Client.inputs("What is in it?", media_type="video", media_path="clip.mp4", max_tokens=2), _Call(sent))
    prompt = json.loads(out["result_json"][0].decode())["prompt"]
    assert "<video>What is in it?" in prompt
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    media = json.loads((copy / "media.json").read_text())
    media["settings"]["insert_media_token"] = "right"
    (copy / "media.json").write_text(json.dumps(media))
    front = engine_front(EngineDir.read(copy), load_config(InferConfig, [f"engine_dir={copy}"]), None)
    assert "What is in it?<video>" in front.render(Request("What is in it?", "video"))
    assert "<video>What is in it?" in front.render(Request("What is in it?", "video", insert_media_token="left"))
