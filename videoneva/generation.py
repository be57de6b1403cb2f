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


class StopStrings:
    """One request's text end strings, matched on the generated text as it is decoded token by token.

    Works for every tokenizer (BPE, Unigram/SentencePiece, WordPiece, WordLevel, byte fallback): it
    never inspects the vocabulary, only what `tokenizer.decode` makes of the generated ids.
    `add(token_id)` is True at the first token whose text completes an end string (the string may
    end inside that token), the same token at which transformers' StopStringCriteria stops.

    Decoding is incremental: each step decodes a short window twice (the ids already read, then the
    same ids plus the new ones) and keeps the difference, so decoders that change how the first
    token of a sequence reads (a dropped leading space, a "##" continuation) never produce text
    that the full decode would not. A window that ends inside a multi-byte character (U+FFFD at
    the end) waits for the next token, at most 3 tokens.

    Args:
        tokenizer: the model's tokenizer.
        texts: end strings (non-empty).
    """

    MAX_PENDING = 4  # a UTF-8 character spans at most 4 byte tokens

    def __init__(self, tokenizer: PreTrainedTokenizerBase, texts: list[str] | tuple[str, ...]):
        self.texts = tuple(t for t in texts if t)
        if not self.texts:
            raise ValueError("StopStrings needs at least one non-empty end string")
        self.tokenizer = tokenizer
        self._keep = max(len(t) for t in self.texts) - 1  # text kept from earlier steps
        self._ids: list[int] = []
        self._prefix = 0  # window start: ids before it are never decoded again
        self._read = 0    # ids before it are already part of the text seen
        self._tail = ""   # the last _keep characters of the text seen

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False) if ids else ""

    def add(self, token_id: int) -> bool:
        """Take the next generated id; True when an end string now appears in the generated text."""
        self._ids.append(int(token_id))
        before = self._decode(self._ids[self._prefix:self._read])
        now = self._decode(self._ids[self._prefix:])
        pending = len(self._ids) - self._read
        if len(now) <= len(before) or (now.endswith("\ufffd") and pending < self.MAX_PENDING):
            return False
        seen = self._tail + now[len(before):]
        self._prefix, self._read = self._read, len(self._ids)
        self._tail = seen[-self._keep:] if self._keep else ""
        return any(t in seen for t in self.texts)


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
