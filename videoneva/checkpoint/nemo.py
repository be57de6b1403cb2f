"""Import NeMo NeVA `.nemo` archives (finetuned, or projector + base GPT) as transformers Llava weights.

A `.nemo` is a tar (plain or gzipped; an extracted folder works too) holding `model_config.yaml`, the
tokenizer files as `<hash>_<name>` artifacts, and the weights as `model_weights.ckpt`,
`mp_rank_XX/model_weights.ckpt` (tensor parallel), `tp_rank_XX_pp_rank_YYY/model_weights.ckpt`
(tensor + pipeline parallel) or a megatron-core `model_weights/` distributed checkpoint (torch_dist or
zarr). Reading and shard merging: nemo_archive.py / nemo_dist.py; key names: nemo_keys.py; the LLM's
config and the keys refused: nemo_config.py; LLM weights: nemo_llm.py; tower and projector:
nemo_vision.py; the tokenizer: nemo_tokenizer.py and prompt_ids.py (NeMo's media expansion).
"""
from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoTokenizer, GPT2TokenizerFast, LlavaConfig, LlavaForConditionalGeneration, \
    PreTrainedTokenizerBase

from videoneva.checkpoint import nemo_keys as K
from videoneva.checkpoint.nemo_archive import CONFIG_NAME, NemoArchive, cfg_get as _get
from videoneva.checkpoint.nemo_config import check_same_llm, llm_family, resolved, text_config, zero_centered_gamma
from videoneva.checkpoint.nemo_llm import embedding_rows, llm_state_dict, pad_vocab
from videoneva.checkpoint.nemo_tokenizer import build_sentencepiece_tokenizer
from videoneva.checkpoint.nemo_vision import projector, vision_tower as load_vision_tower
from videoneva.errors import CheckpointError
from videoneva.prompt_ids import nemo_media_spec, single_token_id


@dataclass
class ImportedCheckpoint:
    config: LlavaConfig
    state_dict: dict[str, torch.Tensor]  # transformers Llava names; strict-loadable into LlavaForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    settings: dict                       # media/template settings from model_config.yaml (only keys it sets)
    source: str


def import_nemo(neva_model_file: str | Path, base_model_file: str | Path | None = None,
                vision_tower: str | Path | None = None, tokenizer: str | Path | None = None,
                tokenizer_rules: str = "2.1") -> ImportedCheckpoint:
    """Read a NeMo NeVA checkpoint into transformers Llava config + weights + tokenizer.

    Args:
        neva_model_file: the NeVA `.nemo` (or its extracted folder). Finetuned: holds the LLM too.
        base_model_file: NeMo GPT `.nemo` with the LLM, for a neva_model_file trained with the LLM frozen
            (projector only). As in NeMo, architecture and tokenizer come from the NeVA config, weights
            from the base (its embedding zero-padded when the NeVA tokenizer is larger); LLM weights
            present in neva_model_file take precedence.
        vision_tower: local HF CLIP dir. Used for the tower's weights when the archive has none (NeMo saves
            them only when the tower was trained), else for its config and preprocessing.
        tokenizer: local HF tokenizer dir, for archives whose tokenizer is only a hub name.
        tokenizer_rules: "2.1" | "2.2": the NeMo release whose SentencePiece special-token rules trained
            the model (nemo_tokenizer.py; they differ only for legacy tokenizers with added tokens).
    """
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="videoneva-nemo-")))
        neva = stack.enter_context(NemoArchive(neva_model_file))
        cfg = neva.config()
        _check_target(neva, cfg)
        mm = _get(cfg, "mm_cfg")
        if not isinstance(mm, dict):
            raise CheckpointError(
                f"{neva.path}: unknown architecture: {CONFIG_NAME} has no mm_cfg, so this is not a NeVA model "
                f"(target {cfg.get('target')!r}). A NeMo GPT .nemo is passed as base_model_file, with a NeVA "
                "neva_model_file")
        r = resolved(cfg)
        family = llm_family(r, neva.path)
        weights = neva.weights(cfg, tmp / "neva")
        archives = [neva]
        if base_model_file is not None:
            base = stack.enter_context(NemoArchive(base_model_file))
            base_cfg = base.config()
            _check_target(base, base_cfg)
            llm_family(resolved(base_cfg), base.path)
            check_same_llm(cfg, base_cfg, neva.path, base.path)
            llm = {k: v for k, v in base.weights(base_cfg, tmp / "base").items() if _is_llm_key(k)}
            llm.update({k: v for k, v in weights.items() if _is_llm_key(k)})
            weights = {**{k: v for k, v in weights.items() if not _is_llm_key(k)}, **llm}
            archives.append(base)
        tok = _load_tokenizer(cfg, archives, tokenizer, tmp / "tok", tokenizer_rules)
        settings = _settings(cfg)
        _attach_media_spec(tok, mm, settings["conv_template"], neva.path)

        where = Path(f"{neva.path} + {base_model_file}") if base_model_file is not None else neva.path
        rows = embedding_rows(weights, cfg, len(tok), neva.path, base_model_file)
        pad_vocab(weights, rows)
        tc = text_config(r, family, rows, tok, neva.path)
        sd: dict[str, torch.Tensor] = {}
        origin: dict[str, str] = {}
        llm_state_dict(weights, tc, family, zero_centered_gamma(r, family), sd, origin, where)
        vision_config, image = load_vision_tower(mm, weights, vision_tower, sd, origin, neva.path)
        settings.update(image)
        adapter = _get(mm, "mm_mlp_adapter_type", "linear")
        projector(adapter, weights, sd, origin, neva.path)
        placed = set(origin.values())
        leftovers = sorted(k for k in weights if k not in placed)
        if leftovers:
            raise CheckpointError(f"{neva.path}: weights this importer does not know how to place: {leftovers[:8]}"
                                  f"{' …' if len(leftovers) > 8 else ''}")
        config = LlavaConfig(
            vision_config=vision_config, text_config=tc,
            image_token_index=_image_token_id(tok, _get(mm, "llm.model_type", "nvgpt"), rows, neva.path),
            image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
            projector_hidden_act=K.PROJECTOR_ACT[adapter], multimodal_projector_bias=True,
            vision_feature_select_strategy="default",
            vision_feature_layer=int(_get(mm, "vision_encoder.vision_select_layer", -2)),
        )
        config.tie_word_embeddings = tc.tie_word_embeddings
        _check_shapes(config, sd, origin, neva.path)
        source = str(neva.path) + (f" + {base_model_file}" if base_model_file is not None else "")
        return ImportedCheckpoint(config, sd, tok, settings, source)


def _is_llm_key(key: str) -> bool:
    return not key.startswith((K.PROJECTOR_PREFIX, K.VISION_PREFIX))


# ---------------------------------------------------------------- config

def _check_target(archive: NemoArchive, cfg: dict) -> None:
    target = str(cfg.get("target") or "")
    name = target.rsplit(".", 1)[-1]
    if target and not re.search(r"Neva|GPT", name):
        raise CheckpointError(f"{archive.path}: unknown architecture {name!r} ({target}); supported: NeMo NeVA "
                              "(MegatronNevaModel) and, as base_model_file, NeMo GPT (MegatronGPTModel)")
    if _get(cfg, "mm_cfg.use_lita", False):
        raise CheckpointError(f"{archive.path}: LITA/VITA models (mm_cfg.use_lita) are not supported")


def _settings(cfg: dict) -> dict:
    """Media and template settings NeMo keeps in the model config (keys it leaves unset are omitted)."""
    template = _get(cfg, "data.conv_template") or _get(cfg, "mm_cfg.llm.model_type", "nvgpt")
    values = {
        "conv_template": template, "media_type": _get(cfg, "data.media_type"),
        "num_frames": _get(cfg, "data.num_frames"), "splice_single_frame": _get(cfg, "data.splice_single_frame"),
        "image_aspect_ratio": _get(cfg, "data.image_aspect_ratio"),
        "image_token_len": _get(cfg, "data.image_token_len"),  # NeMo itself derives it from the image size
        "model_type": _get(cfg, "mm_cfg.llm.model_type"),
        "projector": _get(cfg, "mm_cfg.mm_mlp_adapter_type", "linear"),
        "use_im_start_end": bool(_get(cfg, "mm_cfg.use_im_start_end", False)),
        "vision_encoder": _get(cfg, "mm_cfg.vision_encoder.from_pretrained"),
        "vision_select_layer": _get(cfg, "mm_cfg.vision_encoder.vision_select_layer", -2),
        "crop_size": _get(cfg, "mm_cfg.vision_encoder.crop_size"), "precision": _get(cfg, "precision"),
    }
    return {k: v for k, v in values.items() if v is not None}


def _check_shapes(config: LlavaConfig, sd: dict, origin: dict, path: Path) -> None:
    """Compare against a meta-device Llava built from the config: names and shapes, NeMo names in errors."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LlavaForConditionalGeneration(config).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: imported weights do not match the model: missing {missing[:8]}, "
                              f"unexpected {[origin.get(k, k) for k in unexpected[:8]]}")
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{path}: {origin.get(k, k)} has shape {tuple(sd[k].shape)}, expected {shape} "
                                  f"for {k}")


# ---------------------------------------------------------------- tokenizer

def _artifact(value: Any, archives: list[NemoArchive], dest: Path, as_name: str) -> Optional[Path]:
    """Resolve a config artifact (`nemo:<hash>_<name>` in an archive, or a local path) to a file."""
    if not isinstance(value, str) or not value:
        return None
    member = value[len("nemo:"):] if value.startswith("nemo:") else Path(value).name
    for archive in archives:
        if member in archive.members:
            dest.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(dest / as_name, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return dest / as_name
    local = Path(value)
    if not value.startswith("nemo:") and local.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest / as_name)
        return dest / as_name
    return None


def _load_tokenizer(cfg: dict, archives: list[NemoArchive], override, tmp: Path, rules: str) -> PreTrainedTokenizerBase:
    if override is not None:
        try:
            return AutoTokenizer.from_pretrained(override, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"tokenizer {override}: cannot load: {exc}") from None
    tcfg = _get(cfg, "tokenizer", {})
    library = tcfg.get("library")
    if library == "sentencepiece":
        model = _artifact(tcfg.get("model"), archives, tmp / "sp", "tokenizer.model")
        if model is None:
            raise CheckpointError(f"{archives[0].path}: tokenizer.model {tcfg.get('model')!r} is not in the archive")
        try:
            return build_sentencepiece_tokenizer(model, tcfg, rules, str(archives[0].path))
        except (ValueError, OSError, RuntimeError) as exc:  # sentencepiece raises OSError/RuntimeError on bad files
            raise CheckpointError(f"{archives[0].path}: SentencePiece tokenizer: {exc}") from None
    if library != "huggingface":
        raise CheckpointError(f"{archives[0].path}: tokenizer.library={library!r} is not supported; "
                              "supported: sentencepiece, huggingface")
    tok = _hf_tokenizer(tcfg, archives, tmp)
    special = tcfg.get("special_tokens") or {}
    order = ("unk_token", "mask_token", "pad_token", "sep_token", "eos_token", "bos_token", "cls_token",
             "additional_special_tokens")  # the order NeMo's AutoTokenizer adds them
    added = {k: special[k] for k in order if special.get(k) is not None}
    if added:
        tok.add_special_tokens(added)
    extra = tcfg.get("additional_special_tokens")
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)})
    return tok


def _attach_media_spec(tok: PreTrainedTokenizerBase, mm: dict, template: str, path: Path) -> None:
    """Give the tokenizer NeMo's media expansion (prompt_ids.py); its markers must be single tokens."""
    spec = nemo_media_spec(_get(mm, "llm.model_type", "nvgpt"), bool(_get(mm, "use_im_start_end", False)), template)
    missing = [spec[k] for k in ("start", "patch", "end") if single_token_id(tok, spec[k]) is None]
    if missing:
        raise CheckpointError(f"{path}: the tokenizer does not hold NeMo's media tokens {missing} as single tokens "
                              f"(mm_cfg.llm.model_type={_get(mm, 'llm.model_type')!r}); NeMo cannot place media "
                              "with it either")
    tok.init_kwargs["nemo_media"] = spec


def _hf_tokenizer(tcfg: dict, archives: list[NemoArchive], tmp: Path) -> PreTrainedTokenizerBase:
    name = tcfg.get("type")
    vocab = _artifact(tcfg.get("vocab_file"), archives, tmp / "hf", "vocab.json")
    merges = _artifact(tcfg.get("merge_file"), archives, tmp / "hf", "merges.txt")
    try:
        if vocab is not None and merges is not None:  # GPT-2 style byte-level BPE files stored as artifacts
            return GPT2TokenizerFast.from_pretrained(vocab.parent)
        if name and Path(name).is_dir():
            return AutoTokenizer.from_pretrained(name, local_files_only=True)
        for archive in archives:  # a tokenizer folder packed inside the archive
            dirs = sorted({m.rsplit("/", 1)[0] for m in archive.members
                           if m.endswith(("/tokenizer.json", "/tokenizer_config.json"))})
            if dirs:
                files = [m for m in archive.members if m.startswith(dirs[0] + "/")]
                return AutoTokenizer.from_pretrained(archive.materialize(files, tmp / "packed") / dirs[0],
                                                     local_files_only=True)
        return AutoTokenizer.from_pretrained(name, local_files_only=True)  # the local HF cache, if any
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{archives[0].path}: the HuggingFace tokenizer (type={name!r}) is neither in the archive nor a local "
            f"directory: pass tokenizer=PATH, a local HF tokenizer directory ({exc})") from None


def _image_token_id(tok: PreTrainedTokenizerBase, model_type: str, vocab: int, path: Path) -> int:
    """`<image>` when the tokenizer has it, else NeMo's media patch token for the template family."""
    for token in ("<image>", K.PATCH_TOKEN.get(model_type, K.DEFAULT_PATCH_TOKEN)):
        ids = tok.convert_tokens_to_ids([token])
        if ids and ids[0] is not None and ids[0] != tok.unk_token_id and 0 <= ids[0] < vocab:
            return int(ids[0])
    raise CheckpointError(f"{path}: the tokenizer has neither <image> nor NeMo's patch token "
                          f"{K.PATCH_TOKEN.get(model_type, K.DEFAULT_PATCH_TOKEN)!r}")
