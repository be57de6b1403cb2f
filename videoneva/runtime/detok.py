"""Streamed text from streamed token ids, decoding each id once.

A `tokenizers`-backed tokenizer (every transformers fast tokenizer) is decoded by the library's own
incremental decoder, `tokenizers.decoders.DecodeStream`; any other tokenizer by a window of the
last few ids (a piece is the text the window gains with its newest ids). Text is held back while
it ends in an unfinished UTF-8 character or in what may be the start of an end string, so the
pieces never show text the final answer cuts off.
"""
from __future__ import annotations

from typing import Any, Optional

CONTEXT_IDS = 6  # ids decoded before the new ones in the fallback window (leading-space rules look back)


class IncrementalDetokenizer:
    """push(ids) returns the text that is final so far; finish(text) the rest of the answer.

    Args:
        tokenizer: the model's tokenizer (decode(ids, skip_special_tokens=False) is the reference).
        end_strings: strings that end the answer; text from the first one on is never shown.
    """

    def __init__(self, tokenizer: Any, end_strings: list[str]):
        self.tokenizer = tokenizer
        self.ends = [e for e in end_strings if e]
        self.text = ""      # everything decoded so far
        self.sent = 0       # characters of self.text already given out
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self._stream = None
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=False)
        self._ids: list[int] = []
        self._read = 0      # fallback window: ids [_prefix, _read) are already in self.text
        self._prefix = 0

    def _decode_new(self, ids: list[int]) -> str:
        if self._stream is not None:
            pieces = [self._stream.step(self._backend, int(i)) for i in ids]
            return "".join(p for p in pieces if p)
        self._ids.extend(int(i) for i in ids)
        before = self.tokenizer.decode(self._ids[self._prefix:self._read], skip_special_tokens=False)
        after = self.tokenizer.decode(self._ids[self._prefix:], skip_special_tokens=False)
        if after.endswith("\ufffd") or not after.startswith(before):
            return ""  # an unfinished character: wait for the ids that complete it
        self._prefix, self._read = max(0, len(self._ids) - CONTEXT_IDS), len(self._ids)
        return after[len(before):]

    def _held_back(self, text: str) -> int:
        """Characters at the end of text that could be the start of an end string."""
        hold = 0
        for e in self.ends:
            for n in range(min(len(e) - 1, len(text)), hold, -1):
                if text.endswith(e[:n]):
                    hold = n
                    break
        return hold

    def push(self, ids: list[int]) -> str:
        """The new text that is certain to be part of the answer ("" when nothing is yet)."""
        self.text += self._decode_new(ids)
        cut = min([i for i in (self.text.find(e) for e in self.ends) if i != -1], default=None)
        final = self.text[:cut] if cut is not None else self.text[: len(self.text) - self._held_back(self.text)]
        if len(final) <= self.sent:
            return ""
        out, self.sent = final[self.sent:], len(final)
        return out

    def finish(self, answer: str) -> Optional[str]:
        """The rest of the answer after what push gave out (None when the pieces do not lead to it)."""
        shown = self.text[: self.sent]
        if not answer.startswith(shown):
            return None
        self.sent = len(answer)
        return answer[len(shown):]
