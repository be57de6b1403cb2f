"""Write `.nemo` archives the way NeMo writes them, from transformers weights (test fixtures).

Each step follows NeMo's own tools, not the importer under test:
- model_config.yaml: the `model:` section of examples/multimodal/multimodal_llm/neva/conf/neva_config.yaml
  and video_neva_config.yaml (NeMo 379b87679d), sizes overridden, `target` added as save_to does;
- LLM weights: scripts/checkpoint_converters/convert_llama_hf_to_nemo.py (mcore and legacy names, qkv
  concatenated per query group, fc1 = cat(gate, up)) and, for the nvgpt LLM of video_neva_config,
  convert_nemotron_nemo_to_hf.py read backwards (fc1 = up_proj, LayerNorm weight and bias);
- tensor / pipeline shards: examples/nlp/language_modeling/megatron_change_num_partitions.py (column
  parallel split on dim 0, row parallel on the last dim, a fused GLU split as its W and V halves);
- NeVA keys: neva_model.py (`get_keys_to_keep`: adapter always, LLM / tower only when trained) and
  parallel_adapters.py (mm_projector_adapter.mm_projector; NeMo 23.08: mm_linear_adapter.linear);
- the archive: nlp_overrides.py NLPSaveRestoreConnector (a tar of the folder, arcname ".").
"""
from __future__ import annotations

import copy
import io
import re
import tarfile
from pathlib import Path

import torch
import yaml

NEVA_TARGET = "nemo.collections.multimodal.models.multimodal_llm.neva.neva_model.MegatronNevaModel"
GPT_TARGET = "nemo.collections.nlp.models.language_modeling.megatron_gpt_model.MegatronGPTModel"

STOCK_NEVA = {  # neva_config.yaml, model: (values as the file has them)
    "precision": "${trainer.precision}", "micro_batch_size": 16, "global_batch_size": 128,
    "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "context_parallel_size": 1,
    "virtual_pipeline_model_parallel_size": None, "restore_from_path": None,
    "mm_cfg": {"llm": {"from_pretrained": None, "freeze": True, "model_type": "llama_2"},
               "vision_encoder": {"from_pretrained": "", "from_hf": True, "patch_dim": 14, "crop_size": [224, 224],
                                  "hidden_size": 1024, "vision_select_layer": -2, "class_token_length": 1,
                                  "freeze": True},
               "pretrain_mm_mlp_adapter": None, "mm_mlp_adapter_type": "linear", "use_im_start_end": False},
    "mcore_gpt": False, "encoder_seq_length": 4096, "max_position_embeddings": "${.encoder_seq_length}",
    "position_embedding_type": "rope", "num_layers": 40, "hidden_size": 5120, "ffn_hidden_size": 13824,
    "num_attention_heads": 40, "init_method_std": 0.014, "use_scaled_init_method": True, "hidden_dropout": 0.0,
    "attention_dropout": 0.0, "ffn_dropout": 0.0, "kv_channels": None, "apply_query_key_layer_scaling": True,
    "normalization": "rmsnorm", "layernorm_epsilon": 1e-5, "do_layer_norm_weight_decay": False,
    "pre_process": True, "post_process": True, "persist_layer_norm": True, "bias": False,
    "activation": "fast-swiglu", "headscale": False, "transformer_block_type": "pre_ln",
    "normalize_attention_scores": True, "rotary_percentage": 1.0, "attention_type": "multihead",
    "share_embeddings_and_output_weights": False, "overlap_p2p_comm": False, "batch_p2p_comm": True,
    "seq_len_interpolation_factor": None, "num_query_groups": None, "use_flash_attention": True,
    "sequence_parallel": False, "masked_softmax_fusion": True, "bias_dropout_add_fusion": False,
    "use_cpu_initialization": False, "onnx_safe": False, "gradient_accumulation_fusion": False,
    "openai_gelu": False, "bias_activation_fusion": False, "megatron_legacy": False, "transformer_engine": False,
    "fp8": False, "megatron_amp_O2": True, "seed": 1234,
    "tokenizer": {"library": "sentencepiece", "type": None, "model": None, "vocab_file": None, "merge_file": None,
                  "delimiter": None, "sentencepiece_legacy": False, "additional_special_tokens": None},
    "data": {"packed_sequence": False, "num_workers": 8, "dataloader_type": "cyclic", "data_path": None,
             "lazy_preprocess": True, "is_multimodal": True, "media_type": "image", "sep_image_conv_front": False,
             "conv_template": "${model.mm_cfg.llm.model_type}", "image_folder": None, "image_aspect_ratio": "square"},
}
VIDEO_NEVA_CHANGES = {  # video_neva_config.yaml differs from neva_config.yaml in these model keys
    "micro_batch_size": 1, "global_batch_size": 2, "mcore_gpt": True, "num_layers": 32, "hidden_size": 6144,
    "ffn_hidden_size": 24576, "num_attention_heads": 48, "init_method_std": 0.0134, "normalization": "layernorm1p",
    "activation": "squared-relu", "rotary_percentage": 0.5, "posistion_embedding_type": "rope",
    "num_query_groups": 8, "transformer_engine": True,
}


def stock_config(video: bool, sizes: dict, **over) -> dict:
    """The stock NeVA (or Video NeVA) model config with the model sizes overridden, as save_to stores it."""
    cfg = copy.deepcopy(STOCK_NEVA)
    if video:
        cfg.update(copy.deepcopy(VIDEO_NEVA_CHANGES))
        cfg["mm_cfg"]["vision_encoder"]["crop_size"] = [336, 336]
        cfg["data"].update(media_type="video", splice_single_frame=None, num_frames=8,
                           sep_token_between_frames=False, video_folder=None)
    for key, value in {**sizes, **over}.items():
        node, *path = key.split(".")
        target = cfg
        for part in [node, *path][:-1]:
            target = target.setdefault(part, {})
        target[[node, *path][-1]] = value
    cfg.setdefault("target", NEVA_TARGET)
    return cfg


# ---------------------------------------------------------------- LLM names (the HF → NeMo converters)

def llm_to_nemo(hf: dict, heads: int, groups: int, mcore: bool, family: str = "llama", tied: bool = False,
                split_glu: bool = False, prefix: str = "model.language_model.") -> dict[str, torch.Tensor]:
    """HF Llama/Nemotron weights (a Llava state dict's LLM) → NeMo GPT names and layouts."""
    out: dict[str, torch.Tensor] = {}
    layers = 1 + max(int(m[1]) for k in hf if (m := re.match(rf"{re.escape(prefix)}layers\.(\d+)\.", k)))
    emb = "model.embedding." if mcore else "model.language_model.embedding."
    out[emb + "word_embeddings.weight"] = hf[prefix + "embed_tokens.weight"].float()
    for l in range(layers):
        h = f"{prefix}layers.{l}."
        n = f"model.decoder.layers.{l}." if mcore else f"model.language_model.encoder.layers.{l}."
        hidden = hf[h + "self_attn.q_proj.weight"].shape[1]
        dim = hf[h + "self_attn.q_proj.weight"].shape[0] // heads
        q = hf[h + "self_attn.q_proj.weight"].view(heads, dim, hidden)
        k = hf[h + "self_attn.k_proj.weight"].view(groups, dim, hidden)
        v = hf[h + "self_attn.v_proj.weight"].view(groups, dim, hidden)
        qkv = torch.empty((0, dim, hidden))
        per = heads // groups
        for i in range(groups):
            qkv = torch.cat((qkv, q[i * per:(i + 1) * per], k[i:i + 1], v[i:i + 1]))
        out[n + ("self_attention.linear_qkv.weight" if mcore else "self_attention.query_key_value.weight")] = \
            qkv.reshape(dim * (heads + 2 * groups), hidden)
        out[n + ("self_attention.linear_proj.weight" if mcore else "self_attention.dense.weight")] = \
            hf[h + "self_attn.o_proj.weight"]
        fc1 = "mlp.linear_fc1.weight" if mcore else "mlp.dense_h_to_4h.weight"
        if family == "nemotron":
            out[n + fc1] = hf[h + "mlp.up_proj.weight"]
        elif split_glu:
            out[n + "mlp.dense_h_to_4h.weight"] = hf[h + "mlp.gate_proj.weight"]
            out[n + "mlp.dense_h_to_4h_2.weight"] = hf[h + "mlp.up_proj.weight"]
        else:
            out[n + fc1] = torch.cat((hf[h + "mlp.gate_proj.weight"], hf[h + "mlp.up_proj.weight"]), axis=0)
        out[n + ("mlp.linear_fc2.weight" if mcore else "mlp.dense_4h_to_h.weight")] = hf[h + "mlp.down_proj.weight"]
        for part in ("weight", "bias") if family == "nemotron" else ("weight",):
            pre = ("self_attention.linear_qkv.layer_norm_" if mcore else "input_layernorm.") + part
            post = ("mlp.linear_fc1.layer_norm_" if mcore else "post_attention_layernorm.") + part
            out[n + pre] = hf[h + "input_layernorm." + part]
            out[n + post] = hf[h + "post_attention_layernorm." + part]
        if mcore:  # Transformer Engine keeps FP8 state next to the weights
            out[n + "self_attention.core_attention._extra_state"] = io.BytesIO(b"te")
    final = "model.decoder.final_layernorm." if mcore else "model.language_model.encoder.final_layernorm."
    for part in ("weight", "bias") if family == "nemotron" else ("weight",):
        out[final + part] = hf[prefix + "norm." + part]
    if not tied:
        out[("model." if mcore else "model.language_model.") + "output_layer.weight"] = hf["lm_head.weight"]
    return out


def neva_to_nemo(hf: dict, mcore: bool, adapter: str, with_tower: bool, old_names: bool = False) -> dict:
    """Projector (and tower, when trained) under the word-embedding module, as MegatronNevaModel saves them."""
    emb = "model.embedding.word_embeddings." if mcore else "model.language_model.embedding.word_embeddings."
    proj = emb + ("adapter_layer.mm_linear_adapter.linear." if old_names
                  else "adapter_layer.mm_projector_adapter.mm_projector.")
    p = "model.multi_modal_projector."
    if adapter == "linear":
        out = {proj + "weight": hf[p + "linear_1.weight"], proj + "bias": hf[p + "linear_1.bias"]}
    else:
        out = {proj + f"{i}.{k}": hf[f"{p}linear_{j}.{k}"] for i, j in ((0, 1), (2, 2)) for k in ("weight", "bias")}
    if with_tower:  # an HF CLIPVisionModel of transformers 4.x: its weights under vision_model.
        out.update({emb + "vision_encoder.vision_model." + k[len("model.vision_tower."):]: v
                    for k, v in hf.items() if k.startswith("model.vision_tower.")})
    return out


def amp_o2(sd: dict) -> dict:
    """megatron_amp_O2: the model is wrapped, every key gets `model.module.`."""
    return {k.replace("model.", "model.module.", 1): v for k, v in sd.items()}


# ---------------------------------------------------------------- shards (megatron_change_num_partitions.py)

def _kind(key: str, glu_fused: bool) -> str:
    if re.search(r"(linear_fc1|dense_h_to_4h)\.weight$", key) and glu_fused:
        return "glu"
    if re.search(r"(linear_qkv|query_key_value|linear_fc1|dense_h_to_4h|dense_h_to_4h_2)\.weight$|"
                 r"word_embeddings\.weight$|output_layer\.weight$", key) and "adapter_layer" not in key:
        return "column"
    if re.search(r"(linear_proj|self_attention\.dense|linear_fc2|dense_4h_to_h)\.weight$", key):
        return "row"
    return "replicated"


def split_tp(sd: dict, tp: int, glu_fused: bool) -> list[dict]:
    shards: list[dict] = [{} for _ in range(tp)]
    for key, value in sd.items():
        kind = _kind(key, glu_fused) if isinstance(value, torch.Tensor) else "replicated"
        if kind == "glu":
            w, k = torch.chunk(value, 2, dim=0)
            parts = [torch.cat(p, dim=0) for p in zip(torch.chunk(w, tp, dim=0), torch.chunk(k, tp, dim=0))]
        elif kind == "column":
            parts = torch.split(value, value.shape[0] // tp, dim=0)
        elif kind == "row":
            parts = torch.split(value, value.shape[-1] // tp, dim=-1)
        else:
            parts = [value] * tp
        for shard, part in zip(shards, parts):
            shard[key] = part.clone() if isinstance(part, torch.Tensor) else part
    return shards


def split_pp(sd: dict, stages: int) -> list[dict]:
    """Pipeline stages: local layer numbers, embedding (and NeVA adapter) first, final norm and head last."""
    layers = 1 + max(int(m[1]) for k in sd if (m := re.search(r"\.layers\.(\d+)\.", k)))
    per, out = layers // stages, [{} for _ in range(stages)]
    for key, value in sd.items():
        m = re.search(r"\.layers\.(\d+)\.", key)
        if m:
            i = int(m[1])
            out[i // per][key.replace(f".layers.{i}.", f".layers.{i % per}.", 1)] = value
        else:
            out[-1 if ("output_layer" in key or "final_layernorm" in key) else 0][key] = value
    return out


def write_nemo(path: Path, cfg: dict | None, weights: dict | None, artifacts: dict[str, bytes], tp: int = 1, pp: int = 1,
               dist=None) -> Path:
    """A `.nemo` (or, for a path without the suffix, the extracted folder) in NeMo's layout.

    dist: a callable writing `model_weights/` (nemo_dist_writer.py) instead of model_weights.ckpt files.
    """
    folder = path.parent / (path.name + ".d")
    folder.mkdir(parents=True)
    if cfg is not None:
        (folder / "model_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name, data in artifacts.items():
        (folder / name).write_bytes(data)
    glu_fused = cfg is not None and str(cfg.get("activation", "")).startswith("fast-")
    if weights is None:  # an archive without weights files
        pass
    elif dist is not None:
        dist(weights, folder / "model_weights")
    elif tp == 1 and pp == 1:
        torch.save(weights, folder / "model_weights.ckpt")
    else:
        for p, stage in enumerate(split_pp(weights, pp) if pp > 1 else [weights]):
            for t, shard in enumerate(split_tp(stage, tp, glu_fused)):
                sub = folder / (f"tp_rank_{t:02d}_pp_rank_{p:03d}" if pp > 1 else f"mp_rank_{t:02d}")
                sub.mkdir()
                torch.save(shard, sub / "model_weights.ckpt")
    if path.suffix != ".nemo":
        folder.rename(path)
        return path
    with tarfile.open(path, "w:") as tar:
        tar.add(folder, arcname=".")
    return path
