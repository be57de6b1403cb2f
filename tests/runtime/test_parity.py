"""Our pipeline (features → prompt table → inputs_embeds) equals transformers' Llava fed the same frames."""
from __future__ import annotations

import dataclasses

import torch
from transformers import LlavaForConditionalGeneration

from videoneva.config import InferConfig, load_config
from videoneva.generation import SamplingSettings, generation_config, split_end_strings
from videoneva.media import load_media
from videoneva.runtime.loader import build_pipeline
from videoneva.runtime.pipeline import Request


def _pipeline(ckpt, media_dir, *extra):
    cfg = load_config(InferConfig, [f"neva_model_file={ckpt}", f"inference.media_base_path={media_dir}",
                                    "inference.media_type=video", "inference.insert_media_token=right", *extra])
    return build_pipeline(cfg)


def _reference_inputs(pipe, media_dir, text):
    """input_ids with F·T image tokens where <video> stands + pixel_values, the transformers way."""
    ms = pipe.front.media_settings(Request(text, "video", "clip.mp4"))
    sample = load_media(pipe.media_root, "clip.mp4", ms)
    prompt = pipe.front.render(Request(text, "video", "clip.mp4"))
    n = sample.pixel_values.shape[0] * pipe.vision.tokens_per_frame
    ids = pipe.front.tokenize(prompt, n)
    image_id = pipe.llm.model.config.image_token_id
    ref_ids = [image_id if i >= pipe.llm.vocab_size else i for i in ids]
    return ids, torch.tensor([ref_ids]), torch.as_tensor(sample.pixel_values)


def _features(pipe, req):
    f = pipe.flow.features(req)
    return torch.as_tensor(f.table), f.meta


def test_logits_match_transformers_llava(tiny_checkpoint, media_dir):
    pipe = _pipeline(tiny_checkpoint, media_dir)
    ids, ref_ids, pixels = _reference_inputs(pipe, media_dir, "What color is the shape?")
    assert pixels.shape[0] == 4 and (ref_ids == pipe.llm.model.config.image_token_id).sum() == 4 * 64
    feats, _ = _features(pipe, Request("q", "video", "clip.mp4"))
    ours = pipe.llm.logits(ids, feats)
    ref_model = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    with torch.inference_mode():
        ref = ref_model(input_ids=ref_ids, pixel_values=pixels).logits[0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_greedy_generation_matches_transformers_generate(tiny_checkpoint, media_dir):
    pipe = _pipeline(tiny_checkpoint, media_dir)
    ids, ref_ids, pixels = _reference_inputs(pipe, media_dir, "Can you describe the scene?")
    sampling = SamplingSettings(max_tokens=12, greedy=True, repetition_penalty=1.0, end_strings=[])
    feats, _ = _features(pipe, Request("q", "video", "clip.mp4"))
    ours = pipe.llm.generate(ids, feats, sampling)
    ref_model = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    with torch.inference_mode():
        ref = ref_model.generate(input_ids=ref_ids, pixel_values=pixels, attention_mask=torch.ones_like(ref_ids),
                                 max_new_tokens=12, do_sample=False, eos_token_id=None,
                                 pad_token_id=pipe.tokenizer.pad_token_id)
    want, n = ref[0, ref_ids.shape[1]:].tolist(), len(ours.token_ids)
    assert ours.token_ids == want[:n]
    # all 12 tokens, unless ours stopped where transformers' next token is the end-of-sequence id
    assert n == 12 or (want[n] == pipe.tokenizer.eos_token_id and ours.finish_reason == "stop"), (n, want)


def _transformers_generate(pipe, tiny_checkpoint, ref_ids, pixels, sampling):
    """transformers' own generate() with the GenerationConfig these settings map to."""
    ref_model = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    gc = generation_config(sampling, pipe.tokenizer)
    gc.output_logits = True
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    with torch.inference_mode():
        out = ref_model.generate(input_ids=ref_ids, pixel_values=pixels, attention_mask=torch.ones_like(ref_ids),
                                 generation_config=gc, tokenizer=pipe.tokenizer)
    new = out.sequences[0, ref_ids.shape[1]:].tolist()
    logprobs = torch.stack(out.logits, 1)[0].float().log_softmax(-1).gather(1, torch.tensor(new)[:, None])[:, 0]
    return new, logprobs.tolist()


def test_every_sampling_knob_matches_transformers_generate(tiny_checkpoint, media_dir):
    """Our decode loop applies transformers' processors as its generate() does: the same samples
    (seeded), the same greedy ids under a repetition penalty, the same stops and log-probs."""
    pipe = _pipeline(tiny_checkpoint, media_dir)
    ids, ref_ids, pixels = _reference_inputs(pipe, media_dir, "Can you describe the scene?")
    feats, _ = _features(pipe, Request("q", "video", "clip.mp4"))
    cases = [
        SamplingSettings(max_tokens=10, greedy=True, repetition_penalty=1.5, end_strings=[]),
        SamplingSettings(max_tokens=10, greedy=False, temperature=0.7, top_k=20, top_p=0.9,
                         repetition_penalty=1.2, min_tokens=3, seed=5, end_strings=[]),
        SamplingSettings(max_tokens=10, greedy=False, temperature=1.3, top_k=0, top_p=1.0,
                         repetition_penalty=1.0, seed=11, end_strings=[]),
    ]
    for sampling in cases:
        sampling.return_log_probs = True
        ours = pipe.llm.generate(ids, feats, sampling)
        ref, ref_logprobs = _transformers_generate(pipe, tiny_checkpoint, ref_ids, pixels, sampling)
        assert ours.token_ids == ref[: len(ours.token_ids)] and len(ours.token_ids) == len(ref), sampling
        torch.testing.assert_close(torch.tensor(ours.logprobs), torch.tensor(ref_logprobs), rtol=1e-4, atol=1e-4)
    # stops: a multi-token end string (matched as text) and a one-token one (a stop id), where the
    # greedy answer really produces them
    greedy = SamplingSettings(max_tokens=12, greedy=True, repetition_penalty=1.0, end_strings=[])
    free = pipe.llm.generate(ids, feats, greedy).token_ids
    assert len(free) >= 4
    tok = pipe.tokenizer
    texts = [tok.decode(free[i:i + 2]) for i in range(1, len(free) - 1)]
    text_stop = next(t for t in texts if t.strip() and "\ufffd" not in t)
    id_stop = next(tok.decode([i]) for i in free[1:] if tok.encode(tok.decode([i]), add_special_tokens=False) == [i])
    assert split_end_strings(tok, [text_stop])[1] == [text_stop] and not split_end_strings(tok, [id_stop])[1]
    for end in ([text_stop], [id_stop]):
        sampling = dataclasses.replace(greedy, end_strings=end)
        ours = pipe.llm.generate(ids, feats, sampling)
        ref, _ = _transformers_generate(pipe, tiny_checkpoint, ref_ids, pixels, sampling)
        stop_ids = set(generation_config(sampling, pipe.tokenizer).eos_token_id or [])
        ref = ref[:-1] if ref and ref[-1] in stop_ids else ref
        assert ours.finish_reason == "stop" and ours.token_ids == ref and len(ours.token_ids) < len(free), end


def test_repetition_penalty_sees_prompt_and_sampling_is_seeded(tiny_checkpoint, media_dir):
    pipe = _pipeline(tiny_checkpoint, media_dir)
    base = SamplingSettings(max_tokens=8, greedy=False, temperature=1.0, top_k=0, top_p=1.0,
                            repetition_penalty=1.0, seed=7, end_strings=[])
    req = Request("What color is the shape?", "video", "clip.mp4")
    a = pipe.answer(req, base).token_ids
    b = pipe.answer(req, base).token_ids
    c = pipe.answer(req, dataclasses.replace(base, seed=8)).token_ids
    assert a == b, "same seed must give the same sample"
    assert a != c or len(set(a)) == 1, "another seed should give another sample"


def test_streaming_callback_sees_every_token(tiny_checkpoint, media_dir):
    pipe = _pipeline(tiny_checkpoint, media_dir)
    seen = []
    sampling = SamplingSettings(max_tokens=6, greedy=True, repetition_penalty=1.0, end_strings=[])
    out = pipe.answer(Request("How many shapes?", "video", "clip.mp4"), sampling, on_delta=lambda d: seen.extend(d.token_ids))
    assert seen[: len(out.token_ids)] == out.token_ids


def test_frame_token_pool_cuts_tokens_and_feature_cache_hits(tiny_checkpoint, media_dir):
    pipe = _pipeline(tiny_checkpoint, media_dir, "data.frame_token_pool=2")
    assert pipe.vision.tokens_per_frame == 16 and pipe.settings.image_token_len == 16
    feats, meta = _features(pipe, Request("q", "video", "clip.mp4"))
    assert feats.shape == (4 * 16, pipe.llm.hidden_size) and meta["cache"] == "miss"
    again, meta2 = _features(pipe, Request("another question", "video", "clip.mp4"))
    assert meta2["cache"] == "hit" and torch.equal(again, feats)
    assert pipe.cache.stats.hits == 1 and pipe.cache.stats.misses == 1


def test_image_is_one_frame(tiny_checkpoint, media_dir):
    pipe = _pipeline(tiny_checkpoint, media_dir)
    feats, meta = _features(pipe, Request("q", "image", "still.png"))
    assert meta["num_frames"] == 1 and feats.shape[0] == 64
