"""Small SentencePiece models shaped like the ones NeMo NeVA checkpoints carry.

- llama-like: BPE with byte fallback, identity normalization, whitespace kept (Llama's trainer settings).
- neva: the llama-like model with `<extra_id_0>`..`<extra_id_7>` appended as user-defined pieces, as
  NeMo's scripts/tokenizers/add_special_tokens_to_sentencepiece.py --is_userdefined does for NeVA.
- nvgpt: trained with the `<extra_id_*>` (and Llama-3's header tokens) as user-defined symbols.
"""
from __future__ import annotations

from pathlib import Path

from videoneva.templates import LLAMA3_SPECIALS, LLAVA_SYSTEM, NV_SYSTEM, STEERLM_LABEL

EXTRA_IDS = [f"<extra_id_{i}>" for i in range(8)]
CORPUS = [NV_SYSTEM, LLAVA_SYSTEM, STEERLM_LABEL, "System\nUser\nAssistant\n", "USER: ASSISTANT: [INST] [/INST]",
          "<<SYS>>\n<</SYS>>\n\n", "What color is the moving shape? A red circle on the left, 12 frames.\n",
          "Can you describe the scene? Hand with a robot arm.  Two  spaces\tand a tab.\n"] * 40


def _train(prefix: Path, user_defined: list[str]) -> Path:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(prefix), vocab_size=420, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=user_defined, minloglevel=2)
    return prefix.with_suffix(".model")


def append_user_defined(src: Path, dst: Path, tokens: list[str]) -> Path:
    """Append pieces of type USER_DEFINED (4) with score 0 to a model, as NeMo's add-tokens script does."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.ParseFromString(src.read_bytes())
    for token in tokens:
        model.pieces.append(pb.ModelProto.SentencePiece(piece=token, score=0.0, type=4))
    dst.write_bytes(model.SerializeToString())
    return dst


def make_models(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    base = _train(out / "llama_like", [])
    return {"llama_like": base, "neva": append_user_defined(base, out / "neva.model", EXTRA_IDS),
            "nvgpt": _train(out / "nvgpt", EXTRA_IDS + list(LLAMA3_SPECIALS))}
