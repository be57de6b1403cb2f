"""Train a byte-level BPE tokenizer (tokenizers library) holding a template's special tokens."""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<extra_id_6>", "<extra_id_7>"  # NeMo's nvgpt family: BOS <extra_id_6>, EOS <extra_id_7>


def train_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE (every string encodable, decode(encode(s)) == s) trained on `texts`.

    Args:
        texts: training text (e.g. the rendered conversations of a data set).
        vocab_size: target vocabulary size, special tokens included.
        special_tokens: tokens that must stay single ids (template markers, <image>, <video>).
    """
    specials = list(dict.fromkeys([PAD, BOS, EOS, *special_tokens]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   additional_special_tokens=[t for t in specials if t not in (PAD, BOS, EOS)],
                                   clean_up_tokenization_spaces=False)
