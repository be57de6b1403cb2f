"""NeMo's SentencePieceTokenizer as a transformers tokenizer, ids identical to NeMo's `text_to_ids`.

NeMo (nemo/collections/common/tokenizers/sentencepiece_tokenizer.py) encodes a whole prompt in one
SentencePiece call. With `legacy` (the default when a config has no `sentencepiece_legacy` key,
megatron_base_model.py `_build_tokenizer`) it first splits the text at the special tokens NeMo
added itself, leftmost match first and, at one position, the token added first; each piece of text
between them is encoded on its own (so it gets SentencePiece's dummy-prefix "▁"), the tokens take
their ids. Tokens added by NeMo get ids after the model's pieces, in the order they were added.

Two behaviours changed in NeMo 2.2 (commits d98b7cd1b1 and 8279d3edd1): `special_tokens` given as
a mapping and tokens already in the SentencePiece model are split on too, and a lone "▁" that
starts the text after a split token is dropped. `rules="2.2"` builds that tokenizer; the default
builds the one every earlier release (the NeVA releases 1.20-2.1) built.

The encoder is the `sentencepiece` library itself (no protobuf), so plain text encodes exactly as
SentencePiece encodes it. Decoding joins SentencePiece's decoding of each run with the split
tokens' text (NeMo puts spaces around them; the text here is what the ids stand for).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from transformers import AddedToken, PreTrainedTokenizer

SEPARATOR = "▁"
RULES = ("2.1", "2.2")  # NeMo releases up to 2.1 | 2.2 and later
_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _processor(model: bytes):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model)


class NemoSentencePieceTokenizer(PreTrainedTokenizer):
    """A SentencePiece model plus NeMo's split tokens; saved and loaded with save_pretrained/from_pretrained.

    Args:
        vocab_file: the SentencePiece `.model`.
        nemo_legacy: NeMo's `legacy` flag (split on `nemo_split_tokens` before encoding).
        nemo_split_tokens: [[token, id], …] in the order NeMo registered them.
        nemo_trim_separator: drop a lone "▁" first id after a split token (NeMo >= 2.2).
        nemo_media: how NeMo expands a media token into ids (see prompts.tokenize_with_media).
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, nemo_legacy: bool = True, nemo_split_tokens: Optional[list] = None,
                 nemo_trim_separator: bool = False, nemo_media: Optional[dict] = None, **kwargs):
        self.vocab_file = str(vocab_file)
        self.model_bytes = Path(vocab_file).read_bytes()  # kept: an import's temporary file does not outlive it
        self.sp = _processor(self.model_bytes)
        self.nemo_legacy = bool(nemo_legacy)
        self.nemo_split_tokens = [[str(t), int(i)] for t, i in (nemo_split_tokens or [])]
        self.nemo_trim_separator = bool(nemo_trim_separator)
        self._split_ids = {t: i for t, i in self.nemo_split_tokens}
        # A regex alternation finds the leftmost match and, at one position, the first alternative:
        # NeMo's `min(indices, key=indices.get)` over tokens in insertion order does the same.
        self._split_re = (re.compile("|".join(re.escape(t) for t, _ in self.nemo_split_tokens))
                          if self.nemo_legacy and self.nemo_split_tokens else None)
        self._separator_id = self.sp.piece_to_id(SEPARATOR)  # NeMo compares with this id (unk if absent)
        base = self.sp.get_piece_size()
        added = dict(kwargs.pop("added_tokens_decoder", None) or {})
        for token, i in self.nemo_split_tokens:
            if i >= base:
                added[i] = AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False)
        for role, piece_id in (("bos_token", self.sp.bos_id()), ("eos_token", self.sp.eos_id()),
                               ("unk_token", self.sp.unk_id()), ("pad_token", self.sp.pad_id())):
            if kwargs.get(role) is None and 0 <= piece_id < base:
                kwargs[role] = self.sp.id_to_piece(piece_id)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(added_tokens_decoder=added, nemo_legacy=self.nemo_legacy,
                         nemo_split_tokens=self.nemo_split_tokens, nemo_trim_separator=self.nemo_trim_separator,
                         nemo_media=nemo_media, **kwargs)

    # ------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())}
        vocab.update({t: i for t, i in self.nemo_split_tokens if i >= self.sp.get_piece_size()})
        vocab.update(getattr(self, "_added_tokens_encoder", {}))
        return vocab

    def _convert_token_to_id(self, token: str) -> int:
        return self._split_ids.get(token, self.sp.piece_to_id(token))

    def _convert_id_to_token(self, index: int) -> str:
        if index < self.sp.get_piece_size():
            return self.sp.id_to_piece(index)
        for token, i in self.nemo_split_tokens:
            if i == index:
                return token
        raise IndexError(f"token id {index} is outside this tokenizer ({len(self)} tokens)")

    # ------------------------------------------------------------ encoding

    def _chunks(self, text: str):
        """(start, end, split-token id or None) pieces of text, in order, as NeMo's legacy loop cuts them."""
        at = 0
        if self._split_re is not None:
            for m in self._split_re.finditer(text):
                yield at, m.start(), None
                yield m.start(), m.end(), self._split_ids[m.group()]
                at = m.end()
        yield at, len(text), None

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """NeMo's ids for text and each id's (start, end) character span in it."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for start, end, special in self._chunks(text):
            if special is not None:
                ids.append(special)
                offsets.append((start, end))
                continue
            if start == end:
                continue
            enc = self.sp.encode(text[start:end], return_type="offset_mapping")
            part, spans = list(enc["ids"]), [(start + a, start + b) for a, b in enc["offsets"]]
            # NeMo trims only text that another split token follows, not the text after the last one.
            if (self.nemo_trim_separator and end < len(text) and ids and ids[-1] in self._split_ids.values()
                    and part and part[0] == self._separator_id):
                part, spans = part[1:], spans[1:]
            ids.extend(part)
            offsets.extend(spans)
        return ids, offsets

    def encode_nemo(self, text: str) -> list[int]:
        """NeMo's `text_to_ids(text)`."""
        if self._split_re is None:
            return list(self.sp.encode(text))
        return self.encode_with_offsets(text)[0]

    def tokenize(self, text: str, **kwargs) -> list[str]:
        return [self._convert_id_to_token(i) for i in self.encode_nemo(text)]

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: Optional[list[int]] = None):
        # NeMo's tokenizer adds nothing; BOS is the prompt code's choice (inference.add_BOS).
        return token_ids_0 + (token_ids_1 or [])

    # ------------------------------------------------------------ decoding

    def _runs(self, tokens_or_ids: list, as_ids: bool):
        """Consecutive SentencePiece items, and split tokens one at a time, as (is_split, items)."""
        run: list = []
        base = self.sp.get_piece_size()
        for x in tokens_or_ids:
            split = (x >= base or x in self._split_ids.values()) if as_ids else x in self._split_ids
            if split:
                if run:
                    yield False, run
                    run = []
                yield True, [x]
            else:
                run.append(x)
        if run:
            yield False, run

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(t[0] if split else self.sp.decode_pieces(t) for split, t in self._runs(list(tokens), False))

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        if skip_special_tokens:
            drop = set(self.all_special_ids) | {i for _, i in self.nemo_split_tokens}
            ids = [i for i in ids if i not in drop]
        out = []
        for split, run in self._runs(ids, True):
            out.append(self._convert_id_to_token(run[0]) if split else self.sp.decode(run))
        return "".join(out)

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> tuple[str]:
        out = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + "tokenizer.model")
        out.write_bytes(self.model_bytes)
        return (str(out),)


def sentencepiece_legacy(tcfg: dict) -> bool:
    """NeMo's legacy flag: the config's `sentencepiece_legacy` when the key exists (null = False), else True."""
    return bool(tcfg["sentencepiece_legacy"]) if "sentencepiece_legacy" in tcfg else True


def build_sentencepiece_tokenizer(model_path: Path, tcfg: dict, rules: str = "2.1",
                                  where: str = "") -> NemoSentencePieceTokenizer:
    """The tokenizer NeMo's `_build_tokenizer` makes from a `tokenizer:` config section and its `.model`.

    Args:
        model_path: the SentencePiece model file.
        tcfg: model_config.yaml's `tokenizer` section (library sentencepiece).
        rules: "2.1" (NeMo up to 2.1) | "2.2" (NeMo 2.2 and later), see the module docstring.
        where: the archive, for error messages.
    """
    if rules not in RULES:
        raise ValueError(f"tokenizer rules must be one of {list(RULES)}, got {rules!r}")
    sp = _processor(Path(model_path).read_bytes())
    legacy = sentencepiece_legacy(tcfg)
    mapping = tcfg.get("special_tokens") or {} if rules == "2.2" else {}
    extra = list(tcfg.get("additional_special_tokens") or [])
    if not legacy and (mapping or extra):
        keys = "tokenizer.special_tokens" if mapping else "tokenizer.additional_special_tokens"
        raise ValueError(f"{where}: {keys} is set but tokenizer.sentencepiece_legacy is false; NeMo adds special "
                         "tokens to a SentencePiece tokenizer only in legacy mode (it fails to build this one)")
    split: dict[str, int] = {}
    size = sp.get_piece_size()
    roles: dict[str, Any] = {}
    for name, token in [*mapping.items(), *((None, t) for t in extra)]:
        if token is None:
            continue
        if name is not None:
            roles[name] = token
        piece = sp.piece_to_id(token)
        if piece == sp.unk_id() and token not in split:
            split[token] = size
            size += 1
        elif piece != sp.unk_id() and rules == "2.2":
            split[token] = piece
    return NemoSentencePieceTokenizer(
        str(model_path), nemo_legacy=legacy, nemo_split_tokens=[[t, i] for t, i in split.items()],
        nemo_trim_separator=rules == "2.2", **{k: v for k, v in roles.items() if k in _ROLES})
