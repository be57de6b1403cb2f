"""Key-name tables for NeMo NeVA / Megatron GPT checkpoints → transformers Llava (data only, no logic).

Facts from NVIDIA/NeMo at 379b87679d: scripts/checkpoint_converters/convert_llama_nemo_to_hf.py and
convert_llava_nemo_to_hf.py (mcore names, qkv and fc1 layouts), convert_gpt_nemo_to_mcore.py (legacy
`model.language_model.*` names), nemo/collections/nlp/modules/common/megatron/adapters/
parallel_adapters.py (MultimodalProjectorAdapter), multimodal_llm/neva/neva_model.py (the vision
encoder lives on the word-embedding module); megatron-core dist_checkpointing (stacked layers).
"""
from __future__ import annotations

# Keys are normalised to the mcore names below with the leading `model.` (or `model.module.` under
# megatron_amp_O2) removed. Legacy (non-mcore) NeMo GPT names → mcore names, as regex → replacement
# (scripts/checkpoint_converters/convert_llama_hf_to_nemo.py writes both). A legacy fused GLU
# (`fast-swiglu`) keeps [gate; up] in one dense_h_to_4h, which becomes linear_fc1 like mcore's; the
# unfused `swiglu` keeps gate (dense_h_to_4h) and up (dense_h_to_4h_2) apart: `linear_fc1_gate` /
# `linear_fc1_up`, concatenated (gate first) after tensor-parallel shards are merged.
LEGACY_TO_MCORE: list[tuple[str, str]] = [
    (r"^language_model\.embedding\.word_embeddings\.", "embedding.word_embeddings."),
    (r"^language_model\.encoder\.final_layernorm\.", "decoder.final_layernorm."),
    (r"^language_model\.output_layer\.", "output_layer."),
    (r"^language_model\.encoder\.layers\.(\d+)\.input_layernorm\.(weight|bias)$",
     r"decoder.layers.\1.self_attention.linear_qkv.layer_norm_\2"),
    (r"^language_model\.encoder\.layers\.(\d+)\.self_attention\.query_key_value\.",
     r"decoder.layers.\1.self_attention.linear_qkv."),
    (r"^language_model\.encoder\.layers\.(\d+)\.self_attention\.dense\.",
     r"decoder.layers.\1.self_attention.linear_proj."),
    (r"^language_model\.encoder\.layers\.(\d+)\.post_attention_layernorm\.(weight|bias)$",
     r"decoder.layers.\1.mlp.linear_fc1.layer_norm_\2"),
    (r"^language_model\.encoder\.layers\.(\d+)\.mlp\.dense_h_to_4h_2\.weight$",
     r"decoder.layers.\1.mlp.linear_fc1_up.weight"),
    (r"^language_model\.encoder\.layers\.(\d+)\.mlp\.dense_h_to_4h\.weight$",
     r"decoder.layers.\1.mlp.linear_fc1.weight"),
    (r"^language_model\.encoder\.layers\.(\d+)\.mlp\.dense_4h_to_h\.",
     r"decoder.layers.\1.mlp.linear_fc2."),
    # NeMo 23.08 NeVA named the projector adapter mm_linear_adapter.linear (nlp_overrides.py
    # NLPSaveRestoreConnector.modify_state_dict renames it the same way).
    (r"^((?:language_model\.)?embedding\.word_embeddings\.adapter_layer\.)mm_linear_adapter\.linear\.",
     r"\1mm_projector_adapter.mm_projector."),
]
SPLIT_GLU_ACTIVATIONS = ("swiglu", "geglu", "reglu")  # legacy: gate and up in two tensors
FUSED_GLU_ACTIVATIONS = ("fast-swiglu", "fast-geglu", "fast-reglu")

# Keys that carry no weights we need: Transformer Engine / FP8 state, cached RoPE tables,
# CLIP's position_ids buffer (persistent in older transformers).
IGNORED_KEY_PATTERNS: tuple[str, ...] = (
    r"_extra_state(/.*)?$",
    r"rotary_pos_emb\.inv_freq$",
    r"\.position_ids$",
)

# Tensor-parallel layout per key suffix: the axis the shards are concatenated on. "glu": each rank
# holds [gate_r; up_r] (mcore fused SwiGLU fc1), so shards are split in two before concatenation.
# Any other key is replicated on every rank (norms, row-parallel biases, projector, vision tower).
TP_AXIS: dict[str, object] = {
    "self_attention.linear_qkv.weight": 0,
    "self_attention.linear_qkv.bias": 0,
    "self_attention.linear_proj.weight": 1,
    "mlp.linear_fc1.weight": "glu",
    "mlp.linear_fc1_gate.weight": 0,
    "mlp.linear_fc1_up.weight": 0,
    "mlp.linear_fc2.weight": 1,
    "embedding.word_embeddings.weight": 0,
    "output_layer.weight": 0,
}

# mcore per-layer names → transformers Llama per-layer names (under model.language_model.layers.N.).
# linear_qkv.weight and linear_fc1.weight are split by the importer, not renamed.
LAYER_RENAMES: dict[str, str] = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "input_layernorm.weight": "input_layernorm.weight",                # mcore local (non-TE) spec
    "self_attention.linear_qkv.layer_norm_bias": "input_layernorm.bias",  # LayerNorm (layernorm1p)
    "input_layernorm.bias": "input_layernorm.bias",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    "mlp.linear_fc1.layer_norm_bias": "post_attention_layernorm.bias",
    "pre_mlp_layernorm.bias": "post_attention_layernorm.bias",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",     # mcore local (non-TE) spec
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
QKV_KEY = "self_attention.linear_qkv.weight"
FC1_KEY = "mlp.linear_fc1.weight"
HF_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
HF_FC1 = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
HF_LAYER_PREFIX = "model.language_model.layers."

GLOBAL_RENAMES: dict[str, str] = {
    "embedding.word_embeddings.weight": "model.language_model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.language_model.norm.weight",
    "decoder.final_layernorm.bias": "model.language_model.norm.bias",
    "output_layer.weight": "lm_head.weight",
}
EMBED_KEY = "embedding.word_embeddings.weight"
OUTPUT_KEY = "output_layer.weight"

# The projector is an adapter on the word-embedding module; the HF vision tower is an attribute of it.
PROJECTOR_PREFIX = "embedding.word_embeddings.adapter_layer.mm_projector_adapter.mm_projector."
VISION_PREFIX = "embedding.word_embeddings.vision_encoder."
HF_VISION_PREFIX = "model.vision_tower."

# mm_cfg.mm_mlp_adapter_type → {NeMo suffix under mm_projector.: transformers Llava projector key}.
# 'linear' is one Linear; transformers' projector is Linear-act-Linear, so it is imported exactly as
# linear_1 = the NeMo Linear, act = identity ("linear"), linear_2 = identity matrix with zero bias.
PROJECTOR_KEYS: dict[str, dict[str, str]] = {
    "mlp2x_gelu": {
        "0.weight": "model.multi_modal_projector.linear_1.weight",
        "0.bias": "model.multi_modal_projector.linear_1.bias",
        "2.weight": "model.multi_modal_projector.linear_2.weight",
        "2.bias": "model.multi_modal_projector.linear_2.bias",
    },
    "linear": {
        "weight": "model.multi_modal_projector.linear_1.weight",
        "bias": "model.multi_modal_projector.linear_1.bias",
    },
}
PROJECTOR_ACT = {"mlp2x_gelu": "gelu", "linear": "linear"}

# CLIP towers NeVA is trained with, for archives that carry the tower's weights but whose
# mm_cfg.vision_encoder.from_pretrained is a hub name (no hub here). Values from the models'
# published config.json (vision_config).
KNOWN_VISION_TOWERS: dict[str, dict] = {
    "openai/clip-vit-large-patch14": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768),
    "openai/clip-vit-large-patch14-336": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768),
}

# NeMo's media patch token per mm_cfg.llm.model_type (conversation.py DEFAULT_IMAGE_PATCH_TOKEN):
# the token id the model's media positions carry when the tokenizer has no `<image>` token.
PATCH_TOKEN = {"llama_3": "<|reserved_special_token_3|>"}
DEFAULT_PATCH_TOKEN = "<extra_id_3>"

# model_config.yaml values the transformers Llama graph reproduces exactly; anything else is refused.
SUPPORTED_LLM = {
    "position_embedding_type": ("rope",),
    "normalization": ("rmsnorm",),
    "activation": ("fast-swiglu", "swiglu"),
}
