"""A plain transformers Llava checkpoint as users bring one: a Llama LLM with a 4096-token context, a
SentencePiece-style (Unigram) tokenizer trained at run time, no videoneva.json (LLaVA-1.5 defaults:
the vicuna v1 template, 8 frames of 256 tokens)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tokenizer_kinds import TEXTS, train

CONTEXT = 4096


def make_plain_llava(out: Path) -> Path:
    """Write the checkpoint to `out` (model.safetensors, config.json, tokenizer files) and return it."""
    from videoneva.model.factory import TINY, new_llava

    tok = train("unigram", TEXTS, ["<image>", "<video>"], vocab_size=200)
    sizes = replace(TINY, vocab_size=len(tok), max_position_embeddings=CONTEXT)
    model = new_llava(sizes, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=3)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def good_and_bad_lines() -> tuple[list, set, set]:
    """(prompt-file lines, question_ids that must be answered, question_ids that must fail) over media_dir."""
    lines = [
        {"video": "clip.mp4", "text": "What color is the shape?", "question_id": "mp4"},
        {"video": "missing.mp4", "text": "q", "question_id": "missing"},
        {"video": "clip.webm", "text": "How many shapes are there?", "question_id": "webm"},
        {"video": "empty.mp4", "text": "q", "question_id": "empty"},
        {"video": "truncated.mp4", "text": "q", "question_id": "truncated"},
        {"video": "clip.avi", "text": "Can you describe the scene?", "question_id": "avi"},
        {"video": "notes.txt", "text": "q", "question_id": "text"},
        "{not json",
        {"video": "random.mp4", "text": "q", "question_id": "random"},
    ]
    return lines, {"mp4", "webm", "avi"}, {"missing", "empty", "truncated", "text", "random", None}
