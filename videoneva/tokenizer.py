"""Train a byte-level BPE tokenizer (tokenizers library) that holds a template's special tokens unsplit."""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from videoneva.prompts import MEDIA_TOKENS
from videoneva.templates import NV_BOS, NV_EOS

PAD = "<pad>"
N_BYTES = 256  # the byte alphabet: every string is encodable, so no unk token is needed (unk stays None)


def train_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: list[str], bos_token: str = NV_BOS,
                    eos_token: str = NV_EOS, pad_token: str = PAD) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`: decode(encode(s)) == s for any s, no spaces added.

    BOS/EOS default to NeMo's nvgpt family, "<extra_id_6>"/"<extra_id_7>" (its llama-family templates
    use the same two); pass "<|begin_of_text|>"/"<|eot_id|>" for a llama_3 vocabulary. Save and load
    with save_pretrained / AutoTokenizer.from_pretrained.

    Args:
        texts: training text, e.g. the rendered conversations of a data set.
        vocab_size: target vocabulary size, the 256 byte symbols and the special tokens included.
        special_tokens: tokens that must stay single ids (template markers); <image>/<video> are added.
        bos_token: beginning-of-sequence token (added to the specials).
        eos_token: end-of-sequence token (added to the specials).
        pad_token: padding token (added to the specials).
    """
    specials = list(dict.fromkeys([pad_token, bos_token, eos_token, *special_tokens, *MEDIA_TOKENS.values()]))
    if vocab_size < N_BYTES + len(specials):
        raise ValueError(f"vocab_size must be >= {N_BYTES + len(specials)} (256 bytes + {len(specials)} special "
                         f"tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    extra = [t for t in specials if t not in (pad_token, bos_token, eos_token)]
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad_token, bos_token=bos_token,
                                   eos_token=eos_token, additional_special_tokens=extra,
                                   clean_up_tokenization_spaces=False)
