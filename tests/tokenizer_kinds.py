"""Tiny tokenizers of every model type the `tokenizers` library offers, trained at run time."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

KINDS = ("bpe", "unigram", "wordpiece", "wordlevel")
# training text: the demo questions and answers, and the vicuna system prompt
TEXTS = [
    "What color is the shape? It is red. Is it green, blue or yellow? A circle, a square or a triangle.",
    "Can you describe the scene? The video shows two shapes moving left, right, up and down.",
    "How many shapes are there? There are one, two or three. The answer is 2.",
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: ASSISTANT:",
] * 20
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"


def train(kind: str, texts: list[str], extra_specials: list[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer of `kind` ("bpe": byte-level BPE; "unigram": SentencePiece-style
    with the Metaspace "▁"; "wordpiece": BERT-style "##" pieces; "wordlevel": whole words).

    Args:
        kind: one of KINDS.
        texts: training text.
        extra_specials: tokens that stay single ids (template markers, <image>, <video>).
        vocab_size: target vocabulary size (wordlevel takes every word it sees).
    """
    if kind == "bpe":
        from videoneva.tokenizer import train_tokenizer

        return train_tokenizer(texts, vocab_size=max(vocab_size, 300), special_tokens=extra_specials,
                               bos_token=BOS, eos_token=EOS, pad_token=PAD)
    specials = list(dict.fromkeys([PAD, UNK, BOS, EOS, *extra_specials]))
    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=UNK,
                                          show_progress=False)
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    elif kind == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=specials, show_progress=False)
    else:
        raise ValueError(f"kind={kind!r}: choose one of {KINDS}")
    tok.train_from_iterator(texts, trainer)
    extra = [t for t in specials if t not in (PAD, UNK, BOS, EOS)]
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
                                   additional_special_tokens=extra, clean_up_tokenization_spaces=False)
