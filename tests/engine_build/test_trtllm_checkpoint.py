"""AWQ W4A16 → TensorRT-LLM checkpoint → our loader: the dequantized model is the fake-quantized one."""
from __future__ import annotations

import json

import pytest
import torch
from eb_helpers import VOCAB, cosine, logits, tiny_llama_config
from transformers import LlamaForCausalLM

from engine_build.llm import export_trtllm_checkpoint
from videoneva.errors import CheckpointError, ConfigError
from videoneva.runtime.trtllm_checkpoint import dequantize_awq, load_trtllm_checkpoint, unpack_int4


def reload(ckpt_dir) -> LlamaForCausalLM:
    cfg, sd = load_trtllm_checkpoint(ckpt_dir, vocab_size=VOCAB)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    model.load_state_dict(sd, strict=True)
    return model


# TensorRT-LLM's QuantConfig dataclass (NVIDIA/TensorRT-LLM tensorrt_llm/models/modeling_utils.py) is built with
# `cls(**config["quantization"])`, so every key must be one of its fields; LLaMAConfig
# (tensorrt_llm/models/llama/config.py) reads rotary_base / rotary_scaling; PretrainedConfig reads the rest.
TRTLLM_QUANT_FIELDS = {"quant_algo", "kv_cache_quant_algo", "group_size", "smoothquant_val", "clamp_val",
                       "use_meta_recipe", "has_zero_point", "pre_quant_scale", "exclude_modules"}
TRTLLM_PRETRAINED_REQUIRED = {"architecture", "dtype", "hidden_size", "num_hidden_layers", "num_attention_heads"}


def test_unpack_int4_inverts_modelopt_packing():
    from modelopt.torch.export.quant_utils import pack_int4_in_uint8

    g = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (6, 256), generator=g).float()  # (out, in) int4 values
    scale = torch.rand(6, 2, generator=g) + 0.5  # (out, in / 128)
    w = q * scale.repeat_interleave(128, dim=1)
    packed = pack_int4_in_uint8(w, scale, 128)  # (out/2, in)
    assert packed.shape == (3, 256)
    assert torch.equal(unpack_int4(packed.view(torch.int8)), q.to(torch.int8))
    pqs = torch.rand(256, generator=g) + 0.5
    deq = dequantize_awq(packed.view(torch.int8), scale, pqs, 128)
    torch.testing.assert_close(deq, w * pqs[None, :])


def test_awq_checkpoint_round_trip(tmp_path, awq_lm, eval_ids):
    orig, lm = awq_lm
    cfg = export_trtllm_checkpoint(lm, tmp_path / "ck", "float16")
    fq = logits(lm, eval_ids)  # after export: it resmooths fused q/k/v and gate/up in place
    assert lm.config.vocab_size == VOCAB  # modelopt pads config.vocab_size in place; we restore it
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["config.json", "rank0.safetensors"]
    deq = logits(reload(tmp_path / "ck"), eval_ids)
    assert cosine(deq, fq) >= 0.999
    assert cosine(deq, logits(orig, eval_ids)) > 0.9  # and it is still the same model, 4-bit

    on_disk = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert on_disk == cfg
    q = cfg["quantization"]
    assert q["quant_algo"] == "W4A16_AWQ" and q["group_size"] == 128
    assert q["has_zero_point"] is False and q["pre_quant_scale"] is True
    assert "lm_head" in q["exclude_modules"]
    assert set(q) <= TRTLLM_QUANT_FIELDS
    assert TRTLLM_PRETRAINED_REQUIRED <= set(cfg)
    assert cfg["architecture"] == "LlamaForCausalLM" and cfg["dtype"] == "float16"
    assert cfg["mapping"] == {"world_size": 1, "tp_size": 1, "pp_size": 1}
    assert cfg["num_key_value_heads"] == 2 and cfg["norm_epsilon"] == pytest.approx(1e-5)
    assert cfg["vocab_size"] % 64 == 0 and cfg["vocab_size"] >= VOCAB
    assert cfg["rotary_base"] == 500000.0  # modelopt misses transformers 5's rope_parameters; we add it


def test_dequantized_weights_equal_fake_quant_weights(tmp_path, awq_lm):
    """Per linear: unpacked int4 × group scale × pre_quant_scale (on the input columns) = modelopt's fake quant."""
    _, lm = awq_lm
    export_trtllm_checkpoint(lm, tmp_path / "ck", "float16")
    _, sd = load_trtllm_checkpoint(tmp_path / "ck")
    checked = 0
    for name, mod in lm.named_modules():
        if not hasattr(mod, "weight_quantizer") or not mod.weight_quantizer.is_enabled:
            continue
        pqs = mod.input_quantizer.pre_quant_scale.float().reshape(1, -1)  # (1, in)
        assert not torch.allclose(pqs, torch.ones_like(pqs), atol=0.05)  # calibration made it non-trivial
        with torch.no_grad():
            dense = mod.weight_quantizer(mod.weight).float() * pqs  # (out, in)
        ours = sd[name + ".weight"]
        torch.testing.assert_close(ours, dense, atol=2e-3 * dense.abs().max().item(), rtol=0.01)
        assert (ours - dense / pqs).abs().max() > 10 * (ours - dense).abs().max()  # pqs really is folded in
        checked += 1
    assert checked == 2 * 7


def test_fp8_checkpoint_round_trip(tmp_path, eval_ids):
    """modelopt FP8 (weights and activations) → checkpoint → our loader: float8 weights × scale = the fake-quant
    weights, per linear, and the dense model answers like the fake-quantized one."""
    from engine_build.llm import quantize_fp8
    from eb_helpers import calib_batches

    torch.manual_seed(2)
    orig = LlamaForCausalLM(tiny_llama_config()).eval()
    lm = LlamaForCausalLM(tiny_llama_config()).eval()
    lm.load_state_dict(orig.state_dict())
    lm = quantize_fp8(lm, calib_batches())
    cfg = export_trtllm_checkpoint(lm, tmp_path / "ck", "bfloat16", tp_size=2)
    assert cfg["quantization"]["quant_algo"] == "FP8" and cfg["vocab_size"] == VOCAB
    _, sd = load_trtllm_checkpoint(tmp_path / "ck")
    checked = 0
    for name, mod in lm.named_modules():
        if hasattr(mod, "weight_quantizer") and mod.weight_quantizer.is_enabled:
            with torch.no_grad():
                fake = mod.weight_quantizer(mod.weight).float()
            ours = sd[name + ".weight"]
            # equal up to the odd value rounded to the neighbouring e4m3 step (the export quantizes in bf16)
            assert torch.isclose(ours, fake, atol=1e-6, rtol=0.02).float().mean() > 0.999
            torch.testing.assert_close(ours, fake, atol=1e-6, rtol=0.13)
            assert not torch.equal(fake, mod.weight.float())  # really quantized
            checked += 1
    assert checked == 2 * 7
    assert cosine(logits(reload(tmp_path / "ck"), eval_ids), logits(orig, eval_ids)) > 0.99


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)])
def test_parallel_checkpoint_round_trip(tmp_path, awq_lm, eval_ids, tp, pp):
    _, lm = awq_lm
    cfg = export_trtllm_checkpoint(lm, tmp_path / "ck", "float16", tp_size=tp, pp_size=pp)
    fq = logits(lm, eval_ids)
    assert cfg["mapping"]["tp_size"] == tp and cfg["mapping"]["pp_size"] == pp
    assert sorted(p.name for p in (tmp_path / "ck").glob("rank*.safetensors")) == \
        [f"rank{r}.safetensors" for r in range(tp * pp)]
    assert cosine(logits(reload(tmp_path / "ck"), eval_ids), fq) >= 0.999


def test_unquantized_checkpoint_round_trip(tmp_path, eval_ids):
    torch.manual_seed(1)
    lm = LlamaForCausalLM(tiny_llama_config()).eval()
    cfg = export_trtllm_checkpoint(lm, tmp_path / "ck", "bfloat16", tp_size=2)
    assert cfg["quantization"]["quant_algo"] is None and cfg["dtype"] == "bfloat16"
    back = reload(tmp_path / "ck")
    for k, v in lm.state_dict().items():  # bf16 rounding only
        torch.testing.assert_close(back.state_dict()[k], v, atol=0, rtol=2 ** -8)
    assert cosine(logits(back, eval_ids), logits(lm, eval_ids)) >= 0.9999


def test_export_rejects_float32_and_bad_split(tmp_path):
    lm = LlamaForCausalLM(tiny_llama_config()).eval()
    with pytest.raises(ConfigError, match="float16"):
        export_trtllm_checkpoint(lm, tmp_path / "a", "float32")
    with pytest.raises(ConfigError, match="num_key_value_heads=2 is not divisible by tensor_model_parallel_size=4"):
        export_trtllm_checkpoint(lm, tmp_path / "b", "float16", tp_size=4)
    assert not (tmp_path / "b").exists()


def test_loader_errors(tmp_path, awq_lm):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_trtllm_checkpoint(tmp_path)
    _, lm = awq_lm
    d = tmp_path / "ck"
    export_trtllm_checkpoint(lm, d, "float16", tp_size=2)
    (d / "rank1.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing \['rank1.safetensors'\]"):
        load_trtllm_checkpoint(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization"]["quant_algo"] = "W8A8_SQ_PER_CHANNEL"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="W8A8_SQ_PER_CHANNEL"):
        load_trtllm_checkpoint(d)


def test_engine_dir_loader_uses_our_checkpoint(tmp_path, awq_lm, eval_ids):
    """videoneva.runtime.engine.load_engine_llm rebuilds the AWQ model from llm/trtllm_ckpt on CPU."""
    # engine.py imports the pipeline, which needs videoneva/prompts.py (being written in parallel)
    load_engine_llm = pytest.importorskip("videoneva.runtime.engine", reason="videoneva.runtime.engine not importable "
                                          "yet (videoneva.prompts missing)", exc_type=ImportError).load_engine_llm
    _, lm = awq_lm
    export_trtllm_checkpoint(lm, tmp_path / "llm" / "trtllm_ckpt", "float16")
    fq = logits(lm, eval_ids)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "llm" / "torch")
    model = load_engine_llm(tmp_path, {"llm": {"quantized": True}}, "32")
    assert cosine(logits(model, eval_ids), fq) >= 0.999

