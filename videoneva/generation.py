"""SamplingSettings (videoneva.schema) → transformers GenerationConfig (the reference the torch decode loop is
tested against) and TensorRT-LLM sampling kwargs."""
from __future__ import annotations

from transformers import GenerationConfig, PreTrainedTokenizerBase

from videoneva.schema import SamplingSettings

__all__ = ["SamplingSettings", "split_end_strings", "generation_config", "trim_at_end_strings", "trtllm_sampling_kwargs"]


def split_end_strings(tokenizer: PreTrainedTokenizerBase, end_strings: list[str]) -> tuple[list[int], list[str]]:
    """End strings that are one token become stop ids (cheap, exact); the rest are matched as text."""
    ids, texts = [], []
    for s in end_strings:
        enc = tokenizer.encode(s, add_special_tokens=False)
        if len(enc) == 1 and tokenizer.decode(enc) == s:
            ids.append(enc[0])
        else:
            texts.append(s)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids)), texts


def generation_config(s: SamplingSettings, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """The transformers GenerationConfig for these settings (logits processors are built from it)."""
    stop_ids, stop_texts = split_end_strings(tokenizer, s.end_strings)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids[0] if stop_ids else 0)
    kwargs = dict(
        max_new_tokens=s.max_tokens, min_new_tokens=s.min_tokens or None,
        repetition_penalty=s.repetition_penalty, eos_token_id=stop_ids or None, pad_token_id=pad,
        stop_strings=stop_texts or None, output_scores=s.return_log_probs, return_dict_in_generate=True,
    )
    if s.greedy:
        kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    else:
        # explicit 0 / 1.0 for "off": None would let transformers' defaults (top_k=50) apply
        kwargs.update(do_sample=True, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
    return GenerationConfig(**kwargs)


def trim_at_end_strings(text: str, end_strings: list[str]) -> tuple[str, str | None]:
    """Cut `text` at the first end string; returns (text before it, the end string or None)."""
    cut, found = len(text), None
    for s in end_strings:
        i = text.find(s)
        if i != -1 and i < cut:
            cut, found = i, s
    return text[:cut], found


def trtllm_sampling_kwargs(s: SamplingSettings) -> dict:
    """The same settings in TensorRT-LLM's SamplingConfig / Triton tensorrtllm input names."""
    return {
        "max_new_tokens": s.max_tokens, "min_length": s.min_tokens,
        "top_k": 1 if s.greedy else s.top_k, "top_p": 0.0 if s.greedy else s.top_p,
        "temperature": 1.0 if s.greedy else s.temperature, "repetition_penalty": s.repetition_penalty,
        "stop_words": list(s.end_strings), "random_seed": s.seed,
    }
