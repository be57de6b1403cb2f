"""LLM build steps: the Llava's LLM as a causal LM, AWQ settings checked before any long work, calibration inputs."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from eb_helpers import cosine, tiny_llama_config
from transformers import LlamaForCausalLM

from engine_build.llm import awq_config, check_awq_settings, extract_causal_lm, quantize_awq
from videoneva.errors import ConfigError
from videoneva.model.factory import TINY, new_llava

IMAGE_ID = 3


@pytest.fixture(scope="module")
def llava():
    return new_llava(replace(TINY, image_size=112), image_token_id=IMAGE_ID)


def test_extract_causal_lm_shares_weights_and_matches_llava(llava):
    lm = extract_causal_lm(llava)
    assert lm.config.architectures == ["LlamaForCausalLM"]
    assert lm.config.hidden_size == llava.config.text_config.hidden_size
    assert lm.config is not llava.config.text_config  # a copy: modelopt edits the config it is given
    assert lm.model.embed_tokens.weight.data_ptr() == llava.get_input_embeddings().weight.data_ptr()
    assert lm.lm_head.weight.data_ptr() == llava.lm_head.weight.data_ptr()
    ids = torch.randint(10, 500, (1, 12), generator=torch.Generator().manual_seed(0))  # no image tokens
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, llava(input_ids=ids).logits)
        emb = llava.get_input_embeddings()(ids)
        torch.testing.assert_close(lm(inputs_embeds=emb).logits, llava(input_ids=ids).logits)


def test_check_awq_settings_accepts_good_shapes():
    check_awq_settings(tiny_llama_config(), 128, tp_size=1, pp_size=1)
    check_awq_settings(tiny_llama_config(), 64, tp_size=2, pp_size=2)
    check_awq_settings(tiny_llama_config(), 128, tp_size=2, pp_size=1)  # down_proj: 512 / 2 = 256 inputs per rank


@pytest.mark.parametrize("kw,group,tp,pp,message", [
    ({}, 96, 1, 1, "group_size=96: TensorRT-LLM's W4A16 groupwise kernels take 64 or 128"),
    ({"hidden_size": 192, "num_attention_heads": 3, "num_key_value_heads": 3}, 128, 1, 1,
     "q/k/v_proj: 192 input features per rank"),
    ({"intermediate_size": 384}, 128, 2, 1, "down_proj: 192 input features per rank (tp=2) is not a multiple of "
                                            "group_size=128"),
    ({}, 128, 4, 1, "num_key_value_heads=2 is not divisible by tensor_model_parallel_size=4"),
    ({"num_hidden_layers": 3}, 128, 1, 2, "num_hidden_layers=3 is not divisible by pipeline_model_parallel_size=2"),
    ({}, 128, 0, 1, "must be >= 1"),
])
def test_check_awq_settings_errors(kw, group, tp, pp, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_awq_settings(tiny_llama_config(**kw), group, tp, pp)


def test_check_awq_settings_lists_every_problem():
    with pytest.raises(ConfigError) as e:
        check_awq_settings(tiny_llama_config(num_hidden_layers=3), 96, 4, 2)
    msg = str(e.value)
    assert "group_size=96" in msg and "num_key_value_heads=2" in msg and "num_hidden_layers=3" in msg


def test_tiny_llava_cannot_be_awq_quantized_with_128(llava):
    """TINY's hidden size 64 cannot hold a 128-wide group: refused before calibration starts."""
    with pytest.raises(ConfigError, match="64 input features"):
        check_awq_settings(llava.config.text_config, 128)


def test_awq_config_sets_block_size():
    entries = [e for e in awq_config(64)["quant_cfg"] if e.get("quantizer_name") == "*weight_quantizer"]
    assert entries[0]["cfg"]["block_sizes"][-1] == 64 and entries[0]["cfg"]["num_bits"] == 4
    import modelopt.torch.quantization as mtq

    assert [e for e in mtq.INT4_AWQ_CFG["quant_cfg"] if e.get("quantizer_name") == "*weight_quantizer"][0][
        "cfg"]["block_sizes"][-1] == 128  # the library default is untouched


def test_quantize_awq_calibrates_on_multimodal_embeddings():
    """Calibration batches are model kwargs: inputs_embeds with visual rows, not token ids."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_llama_config()).eval()
    ref = LlamaForCausalLM(tiny_llama_config()).eval()
    ref.load_state_dict(lm.state_dict())
    seen = []
    lm.register_forward_pre_hook(lambda m, args, kw: seen.append(sorted(kw)), with_kwargs=True)
    g = torch.Generator().manual_seed(0)
    batches = [{"inputs_embeds": torch.randn(1, 20, 256, generator=g) * 0.05,
                "attention_mask": torch.ones(1, 20, dtype=torch.long)} for _ in range(3)]
    q = quantize_awq(lm, batches, group_size=128)
    assert seen and all(s == ["attention_mask", "inputs_embeds"] for s in seen)
    quantizers = [m for n, m in q.named_modules() if n.endswith("q_proj.weight_quantizer")]
    assert quantizers and all(m.is_enabled for m in quantizers)
    assert not [m for n, m in q.named_modules() if n.endswith("lm_head.weight_quantizer") and m.is_enabled]
    x = batches[0]["inputs_embeds"]
    with torch.no_grad():
        c = cosine(q(inputs_embeds=x).logits, ref(inputs_embeds=x).logits)
    assert 0.9 < c < 1.0  # quantized (not identical), still the same model


def test_quantize_awq_needs_samples():
    from transformers import LlamaForCausalLM

    with pytest.raises(ConfigError, match="at least one sample"):
        quantize_awq(LlamaForCausalLM(tiny_llama_config()).eval(), [], group_size=128)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def test_rope_fields_for_tensorrt_llm():
    """rotary_base / rotary_scaling as tensorrt_llm/models/llama/config.py (LLaMAConfig) and its attention
    layer read them: unscaled RoPE is null (TensorRT-LLM has no "default" scaling type)."""
    from transformers import MistralConfig

    from engine_build.llm import rope_fields

    assert rope_fields(tiny_llama_config()) == {"rotary_base": 500000.0, "rotary_scaling": None}
    assert rope_fields(MistralConfig(rope_theta=1e6)) == {"rotary_base": 1e6, "rotary_scaling": None}
    llama3 = tiny_llama_config(max_position_embeddings=16384, rope_scaling=dict(LLAMA3_SCALING))
    assert rope_fields(llama3) == {"rotary_base": 500000.0, "rotary_scaling": {
        "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}}


@pytest.mark.parametrize("arch, kw, base, scaling", [
    ("llama", dict(max_position_embeddings=16384, rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING)), 500000.0,
     "llama3"),
    ("mistral", dict(rope_theta=1e6, sliding_window=None), 1e6, None),
])
def test_exported_checkpoint_carries_the_models_rope(tmp_path, arch, kw, base, scaling):
    """Through modelopt's real export: the checkpoint's RoPE is the transformers-5 config's, not 10000."""
    import json

    from transformers import MistralConfig, MistralForCausalLM

    from engine_build.llm import export_trtllm_checkpoint

    if arch == "llama":
        lm = LlamaForCausalLM(tiny_llama_config(**kw)).eval()
    else:
        base_kw = {k: v for k, v in tiny_llama_config().to_dict().items() if k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps")}
        lm = MistralForCausalLM(MistralConfig(**base_kw, **kw, architectures=["MistralForCausalLM"])).eval()
    cfg = export_trtllm_checkpoint(lm, tmp_path / "ck", "float16")
    on_disk = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert on_disk == cfg and cfg["rotary_base"] == base
    if scaling is None:
        assert cfg["rotary_scaling"] is None
    else:
        assert cfg["rotary_scaling"]["type"] == scaling and cfg["rotary_scaling"]["factor"] == 8.0
        assert cfg["rotary_scaling"]["original_max_position_embeddings"] == 8192
