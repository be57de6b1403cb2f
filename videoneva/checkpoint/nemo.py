"""Import NeMo NeVA `.nemo` archives (finetuned, or projector + base GPT) as transformers Llava weights.

A `.nemo` is a tar (plain or gzipped; an extracted folder works too) holding `model_config.yaml`, the
tokenizer files as `<hash>_<name>` artifacts, and the weights as `model_weights.ckpt`,
`mp_rank_XX/model_weights.ckpt` (tensor parallel), `tp_rank_XX_pp_rank_YYY/model_weights.ckpt`
(tensor + pipeline parallel) or a megatron-core `model_weights/` distributed checkpoint (torch_dist).
Key names and tensor layouts are in `nemo_keys.py`; reading and shard merging in `nemo_archive.py`.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import (AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, GPT2TokenizerFast, LlamaConfig,
                          LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerBase)

from videoneva.checkpoint import nemo_keys as K
from videoneva.checkpoint.nemo_archive import CONFIG_NAME, NemoArchive, cfg_get as _get
from videoneva.errors import CheckpointError


@dataclass
class ImportedCheckpoint:
    config: LlavaConfig
    state_dict: dict[str, torch.Tensor]  # transformers Llava names; strict-loadable into LlavaForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    settings: dict                       # media/template settings from model_config.yaml (only keys it sets)
    source: str


def import_nemo(neva_model_file: str | Path, base_model_file: str | Path | None = None,
                vision_tower: str | Path | None = None, tokenizer: str | Path | None = None) -> ImportedCheckpoint:
    """Read a NeMo NeVA checkpoint into transformers Llava config + weights + tokenizer.

    Args:
        neva_model_file: the NeVA `.nemo` (or its extracted folder). Finetuned: holds the LLM too.
        base_model_file: NeMo GPT `.nemo` with the LLM, for a neva_model_file trained with the LLM frozen
            (projector only). As in NeMo, architecture and tokenizer come from the NeVA config, weights
            from the base; LLM weights present in neva_model_file take precedence.
        vision_tower: local HF CLIP dir. Used for the tower's weights when the archive has none (NeMo saves
            them only when the tower was trained), else only for its config.
        tokenizer: local HF tokenizer dir, for archives whose tokenizer is only a hub name.
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
        _check_llm_config(cfg, neva.path)
        weights = neva.weights(cfg, tmp / "neva")
        archives = [neva]
        if base_model_file is not None:
            base = stack.enter_context(NemoArchive(base_model_file))
            base_cfg = base.config()
            _check_target(base, base_cfg)
            _check_llm_config(base_cfg, base.path)
            _check_same_llm(cfg, base_cfg, neva.path, base.path)
            llm = {k: v for k, v in base.weights(base_cfg, tmp / "base").items() if _is_llm_key(k)}
            llm.update({k: v for k, v in weights.items() if _is_llm_key(k)})
            weights = {**{k: v for k, v in weights.items() if not _is_llm_key(k)}, **llm}
            archives.append(base)
        tok = _load_tokenizer(cfg, archives, tokenizer, tmp / "tok")

        text_config = _text_config(cfg, weights, tok, neva.path)
        sd: dict[str, torch.Tensor] = {}
        origin: dict[str, str] = {}
        _llm_state_dict(weights, text_config, sd, origin, neva.path, base_model_file)
        vision_config = _vision_tower(mm, weights, vision_tower, sd, origin, neva.path)
        adapter = _get(mm, "mm_mlp_adapter_type", "linear")
        _projector(adapter, weights, sd, origin, neva.path)
        placed = set(origin.values())
        leftovers = sorted(k for k in weights if k not in placed)
        if leftovers:
            raise CheckpointError(f"{neva.path}: weights this importer does not know how to place: {leftovers[:8]}"
                                  f"{' …' if len(leftovers) > 8 else ''}")

        image_id = _image_token_id(tok, _get(mm, "llm.model_type", "nvgpt"), text_config.vocab_size, neva.path)
        select = _get(mm, "vision_encoder.vision_select_feature", "patch")
        if select not in ("patch", "cls_patch") or _get(mm, "vision_encoder.class_token_length", 1) != 1:
            raise CheckpointError(f"{neva.path}: mm_cfg.vision_encoder.vision_select_feature={select!r} / "
                                  "class_token_length must be 'patch'|'cls_patch' / 1 for a CLIP tower")
        config = LlavaConfig(
            vision_config=vision_config, text_config=text_config, image_token_index=image_id,
            image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
            projector_hidden_act=K.PROJECTOR_ACT[adapter], multimodal_projector_bias=True,
            vision_feature_select_strategy="default" if select == "patch" else "full",
            vision_feature_layer=int(_get(mm, "vision_encoder.vision_select_layer", -2)),
        )
        config.tie_word_embeddings = text_config.tie_word_embeddings
        _check_shapes(config, sd, origin, neva.path)
        source = str(neva.path) + (f" + {base_model_file}" if base_model_file is not None else "")
        return ImportedCheckpoint(config, sd, tok, _settings(cfg), source)


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


def _check_llm_config(cfg: dict, path: Path) -> None:
    """Refuse LLM variants the transformers Llama graph does not compute exactly, naming the key."""
    problems = []
    defaults = {"position_embedding_type": "learned_absolute", "normalization": "layernorm", "activation": "gelu"}
    for key, allowed in K.SUPPORTED_LLM.items():
        value = _get(cfg, key, defaults[key])
        if value not in allowed:
            problems.append(f"{key}={value!r} (supported: {list(allowed)})")
    checks = [("bias", True, False), ("rotary_percentage", 1.0, 1.0), ("normalize_attention_scores", True, True),
              ("num_moe_experts", None, None), ("window_size", None, None), ("rotary_interleaved", False, False),
              ("megatron_legacy", False, False), ("scale_positional_embedding", False, False)]
    for key, default, wanted in checks:
        value = _get(cfg, key, default)
        if value != wanted:
            problems.append(f"{key}={value!r} (supported: {wanted!r})")
    if problems:
        raise CheckpointError(
            f"{path}: unknown architecture: the LLM in {CONFIG_NAME} is not a Llama-style model: "
            + "; ".join(problems) + ". Supported: RoPE + RMSNorm + SwiGLU without biases (Llama, Mistral)")


def _check_same_llm(neva: dict, base: dict, neva_path: Path, base_path: Path) -> None:
    keys = ("hidden_size", "num_layers", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "kv_channels")
    diff = [f"{k}: {_get(neva, k)} vs {_get(base, k)}" for k in keys if _get(neva, k) != _get(base, k)]
    if diff:
        raise CheckpointError(f"{neva_path} and base_model_file {base_path} describe different LLMs "
                              f"({'; '.join(diff)}): pass the GPT .nemo this NeVA model was trained on")


def _text_config(cfg: dict, weights: dict, tok: PreTrainedTokenizerBase, path: Path) -> LlamaConfig:
    if K.EMBED_KEY not in weights:
        raise CheckpointError(
            f"{path}: no LLM weights ({K.EMBED_KEY}): this NeVA checkpoint was trained with the LLM frozen and "
            f"holds only the projector. Pass base_model_file=PATH, the NeMo GPT .nemo it was trained on "
            f"(mm_cfg.llm.from_pretrained: {_get(cfg, 'mm_cfg.llm.from_pretrained')!r})")
    required = ("hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size")
    missing = [k for k in required if _get(cfg, k) is None]
    if missing:
        raise CheckpointError(f"{path}/{CONFIG_NAME}: missing LLM sizes {missing}")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    vocab = weights[K.EMBED_KEY].shape[0]  # NeMo pads the vocabulary (make_vocab_size_divisible_by × TP)
    if len(tok) > vocab:
        raise CheckpointError(f"{path}: the tokenizer has {len(tok)} tokens but {K.EMBED_KEY} only {vocab} rows")
    factor = _get(cfg, "seq_len_interpolation_factor")
    rope = {"rope_type": "default", "rope_theta": float(_get(cfg, "rotary_base", 10000))}
    if factor:
        rope.update(rope_type="linear", factor=float(factor))
    tied = bool(_get(cfg, "share_embeddings_and_output_weights", True))
    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=int(cfg["num_layers"]),
        num_attention_heads=heads, num_key_value_heads=int(_get(cfg, "num_query_groups", heads)),
        head_dim=int(_get(cfg, "kv_channels", hidden // heads)), intermediate_size=int(cfg["ffn_hidden_size"]),
        max_position_embeddings=int(_get(cfg, "max_position_embeddings", _get(cfg, "encoder_seq_length", 4096))),
        rms_norm_eps=float(_get(cfg, "layernorm_epsilon", 1e-5)), rope_parameters=rope, tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attention_bias=False, mlp_bias=False,
    )


def _settings(cfg: dict) -> dict:
    """Media and template settings NeMo keeps in the model config (keys it leaves unset are omitted)."""
    template = _get(cfg, "data.conv_template") or _get(cfg, "mm_cfg.llm.model_type")
    values = {
        "conv_template": template, "media_type": _get(cfg, "data.media_type"),
        "num_frames": _get(cfg, "data.num_frames"), "splice_single_frame": _get(cfg, "data.splice_single_frame"),
        "image_aspect_ratio": _get(cfg, "data.image_aspect_ratio"),
        "image_token_len": _get(cfg, "data.image_token_len"),  # NeMo itself derives it from the image size
        "model_type": _get(cfg, "mm_cfg.llm.model_type"),
        "projector": _get(cfg, "mm_cfg.mm_mlp_adapter_type", "linear"),
        "use_im_start_end": _get(cfg, "mm_cfg.use_im_start_end"),
        "vision_encoder": _get(cfg, "mm_cfg.vision_encoder.from_pretrained"),
        "vision_select_layer": _get(cfg, "mm_cfg.vision_encoder.vision_select_layer", -2),
        "crop_size": _get(cfg, "mm_cfg.vision_encoder.crop_size"), "precision": _get(cfg, "precision"),
    }
    return {k: v for k, v in values.items() if v is not None}


# ---------------------------------------------------------------- weights

def _take(weights: dict, key: str, shape: tuple, path: Path) -> torch.Tensor:
    if key not in weights:
        raise CheckpointError(f"{path}: missing tensor {key!r}")
    t = weights[key]
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{path}: {key} has shape {tuple(t.shape)}, expected {tuple(shape)} "
                              f"(from {CONFIG_NAME})")
    return t


def _llm_state_dict(w: dict, tc: LlamaConfig, sd: dict, origin: dict, path: Path, base) -> None:
    """Megatron GPT (mcore names) → transformers Llama, splitting fused qkv and SwiGLU fc1."""
    heads, groups, dim = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
    hidden, ffn, per = tc.hidden_size, tc.intermediate_size, heads // groups
    where = Path(f"{path} + {base}") if base is not None else path
    for i in range(tc.num_hidden_layers):
        src, dst = f"decoder.layers.{i}.", f"{K.HF_LAYER_PREFIX}{i}."
        qkv_key = src + K.QKV_KEY
        # Megatron interleaves per query group: [q × heads_per_group, k, v] rows of head_dim each.
        qkv = _take(w, qkv_key, ((heads + 2 * groups) * dim, hidden), where).reshape(groups, per + 2, dim, hidden)
        parts = (qkv[:, :per].reshape(heads * dim, hidden), qkv[:, per].reshape(groups * dim, hidden),
                 qkv[:, per + 1].reshape(groups * dim, hidden))
        for name, t in zip(K.HF_QKV, parts):
            sd[dst + name], origin[dst + name] = t.contiguous(), qkv_key
        if src + "mlp.linear_fc1_gate.weight" in w:  # legacy names: separate gate / up tensors
            fc1_keys = (src + "mlp.linear_fc1_gate.weight", src + "mlp.linear_fc1_up.weight")
            halves = tuple(_take(w, k, (ffn, hidden), where) for k in fc1_keys)
        else:  # fused [gate; up]
            fc1_keys = (src + K.FC1_KEY,) * 2
            halves = _take(w, fc1_keys[0], (2 * ffn, hidden), where).chunk(2, dim=0)
        for name, t, key in zip(K.HF_FC1, halves, fc1_keys):
            sd[dst + name], origin[dst + name] = t.contiguous(), key
        for mcore, hf in K.LAYER_RENAMES.items():
            if src + mcore in w:
                sd[dst + hf], origin[dst + hf] = w[src + mcore], src + mcore
    for mcore, hf in K.GLOBAL_RENAMES.items():
        if mcore in w:
            sd[hf], origin[hf] = w[mcore], mcore
    if tc.tie_word_embeddings:
        if K.OUTPUT_KEY in w:
            raise CheckpointError(f"{where}: share_embeddings_and_output_weights is true but the checkpoint has "
                                  f"a separate {K.OUTPUT_KEY}")
        sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]


def _vision_tower(mm: dict, w: dict, vision_tower, sd: dict, origin: dict, path: Path) -> CLIPVisionConfig:
    """The CLIP tower: weights from the archive when present, else from a local HF CLIP dir."""
    if not _get(mm, "vision_encoder.from_hf", True):
        raise CheckpointError(f"{path}: mm_cfg.vision_encoder.from_hf is false (a NeMo CLIP tower); only "
                              "HF CLIPVisionModel towers are supported")
    name = _get(mm, "vision_encoder.from_pretrained", "")
    local = Path(vision_tower) if vision_tower is not None else (Path(name) if name and Path(name).is_dir() else None)
    if local is not None and not (local / "config.json").is_file():
        raise CheckpointError(f"vision tower {local}: not a HF CLIP directory (no config.json)")
    inside = {k[len(K.VISION_PREFIX):]: k for k in w if k.startswith(K.VISION_PREFIX)}
    if inside:
        if local is not None:
            config = _clip_config(local)
        elif name in K.KNOWN_VISION_TOWERS:
            config = CLIPVisionConfig(**K.KNOWN_VISION_TOWERS[name])
        else:
            raise CheckpointError(
                f"{path}: the archive holds the vision tower's weights but its config "
                f"(mm_cfg.vision_encoder.from_pretrained={name!r}) is not a local directory: pass vision_tower=PATH, "
                "a local HF CLIP directory (only its config.json is used)")
        for sub, key in inside.items():
            hf = K.HF_VISION_PREFIX + (sub[len("vision_model."):] if sub.startswith("vision_model.") else sub)
            sd[hf], origin[hf] = w[key], key
        return config
    if local is None:
        raise CheckpointError(
            f"{path}: the vision tower is not in the archive (it was frozen in training) and "
            f"mm_cfg.vision_encoder.from_pretrained={name!r} is not a local directory (no hub downloads): "
            "pass vision_tower=PATH, a local HF CLIP directory")
    try:
        model = CLIPVisionModel.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"vision tower {local}: cannot load a CLIPVisionModel: {exc}") from None
    for sub, t in model.state_dict().items():
        if re.search(r"\.position_ids$", sub):
            continue
        hf = K.HF_VISION_PREFIX + (sub[len("vision_model."):] if sub.startswith("vision_model.") else sub)
        sd[hf], origin[hf] = t, f"{local}:{sub}"
    return model.config


def _clip_config(local: Path) -> CLIPVisionConfig:
    try:
        return CLIPVisionConfig.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"vision tower {local}: cannot read a CLIP vision config: {exc}") from None


def _projector(adapter: str, w: dict, sd: dict, origin: dict, path: Path) -> None:
    if adapter not in K.PROJECTOR_KEYS:
        raise CheckpointError(f"{path}: mm_cfg.mm_mlp_adapter_type={adapter!r} is not supported; supported: "
                              f"{sorted(K.PROJECTOR_KEYS)} (transformers' Llava projector is Linear-act-Linear)")
    found = {k[len(K.PROJECTOR_PREFIX):] for k in w if k.startswith(K.PROJECTOR_PREFIX)}
    missing = sorted(set(K.PROJECTOR_KEYS[adapter]) - found)
    if missing:
        raise CheckpointError(f"{path}: no projector weights for mm_mlp_adapter_type={adapter!r}: missing "
                              f"{[K.PROJECTOR_PREFIX + m for m in missing]} (found {sorted(found)})")
    for sub, hf in K.PROJECTOR_KEYS[adapter].items():
        sd[hf], origin[hf] = w[K.PROJECTOR_PREFIX + sub], K.PROJECTOR_PREFIX + sub
    if adapter == "linear":  # exact: act = identity, linear_2 = I, bias 0
        out = sd["model.multi_modal_projector.linear_1.weight"]
        n = out.shape[0]
        sd["model.multi_modal_projector.linear_2.weight"] = torch.eye(n, dtype=out.dtype)
        sd["model.multi_modal_projector.linear_2.bias"] = torch.zeros(n, dtype=out.dtype)
        origin["model.multi_modal_projector.linear_2.weight"] = "(identity for 'linear')"
        origin["model.multi_modal_projector.linear_2.bias"] = "(zero for 'linear')"


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


def _load_tokenizer(cfg: dict, archives: list[NemoArchive], override, tmp: Path) -> PreTrainedTokenizerBase:
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
        if importlib.util.find_spec("sentencepiece") is None:
            raise CheckpointError(f"{archives[0].path}: the SentencePiece tokenizer needs the `sentencepiece` "
                                  "package: pip install sentencepiece")
        from transformers import LlamaTokenizer

        # NeMo's SentencePieceTokenizer adds no BOS/EOS by itself; the prompt code does.
        tok = LlamaTokenizer.from_pretrained(model.parent, legacy=bool(tcfg.get("sentencepiece_legacy", False)),
                                             add_bos_token=False, add_eos_token=False)
    elif library == "huggingface":
        tok = _hf_tokenizer(tcfg, archives, tmp)
    else:
        raise CheckpointError(f"{archives[0].path}: tokenizer.library={library!r} is not supported; "
                              "supported: sentencepiece, huggingface")
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
