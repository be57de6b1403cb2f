"""LLM side of the build: standalone causal LM, AWQ W4A16 or FP8 through modelopt, TensorRT-LLM checkpoint,
trtllm-build."""
from __future__ import annotations

import copy
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
from transformers import LlamaForCausalLM, MistralForCausalLM, PreTrainedModel

from videoneva.errors import ConfigError

log = logging.getLogger(__name__)

_CAUSAL_LM = {"llama": LlamaForCausalLM, "mistral": MistralForCausalLM}
# dtypes a TensorRT-LLM checkpoint is written in. modelopt turns float32 into float16 with only a
# warning (model_config_export.py), so we refuse it rather than write something else than asked.
EXPORT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def extract_causal_lm(llava) -> PreTrainedModel:
    """The LLM of a Llava model as a standalone causal LM that shares its modules (no weight copy).

    The config is llava.config.text_config with `architectures` set (modelopt's HF export and
    TensorRT-LLM's converters read it). Note: quantizing the result in place also quantizes the
    Llava's language model, since the modules are the same objects.

    Args:
        llava: a transformers LlavaForConditionalGeneration.
    """
    tc = copy.deepcopy(llava.config.text_config)
    cls = _CAUSAL_LM.get(tc.model_type)
    if cls is None:
        raise ConfigError(f"text_config.model_type={tc.model_type!r}: only {sorted(_CAUSAL_LM)} LLMs can be built")
    tc.architectures = [cls.__name__]
    with torch.device("meta"):
        lm = cls(tc)
    lm.model = llava.model.language_model  # embed_tokens, layers, norm, rotary_emb
    lm.lm_head = llava.lm_head
    leftover = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    assert not leftover, f"modules not taken from the Llava model: {leftover[:4]}"
    lm.generation_config = copy.deepcopy(llava.generation_config)
    return lm.eval()


def check_awq_settings(text_config, group_size: int, tp_size: int = 1, pp_size: int = 1) -> None:
    """Raise ConfigError (listing every problem) when W4A16 AWQ with these settings cannot be built.

    Each linear's input features, after the tensor-parallel split, must be a multiple of the group
    size (one scale per group); packed int4 needs an even number of output rows per rank; heads split
    over tp and layers over pp.

    Args:
        text_config: the LLM's transformers config (hidden_size, intermediate_size, heads, layers).
        group_size: AWQ block size along the input features (TensorRT-LLM kernels take 64 or 128).
        tp_size: tensor parallel size of the TensorRT-LLM checkpoint.
        pp_size: pipeline parallel size.
    """
    hidden, inter = int(text_config.hidden_size), int(text_config.intermediate_size)
    heads = int(text_config.num_attention_heads)
    kv = int(getattr(text_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text_config, "head_dim", None) or hidden // heads)
    layers = int(text_config.num_hidden_layers)
    problems = []
    if group_size not in (64, 128):
        problems.append(f"quantization.group_size={group_size}: TensorRT-LLM's W4A16 groupwise kernels take 64 or 128")
    problems += _parallel_problems(text_config, tp_size, pp_size)
    if tp_size < 1 or pp_size < 1:
        raise ConfigError("cannot quantize with AWQ W4A16: " + "; ".join(problems))
    if group_size > 0:
        # (linear, in_features per rank, out_features per rank)
        q_out = heads * head_dim // max(tp_size, 1)
        kv_out = kv * head_dim // max(tp_size, 1)
        linears = [("q/k/v_proj", hidden, q_out + 2 * kv_out), ("o_proj", heads * head_dim // tp_size, hidden),
                   ("gate_proj/up_proj", hidden, inter // tp_size), ("down_proj", inter // tp_size, hidden)]
        for name, in_f, out_f in linears:
            if in_f % group_size:
                problems.append(f"{name}: {in_f} input features per rank (tp={tp_size}) is not a multiple of "
                                f"group_size={group_size}")
            if out_f % 2:
                problems.append(f"{name}: {out_f} output features per rank is odd; int4 packs two rows per byte")
    if problems:
        raise ConfigError("cannot quantize with AWQ W4A16: " + "; ".join(problems))


def awq_config(group_size: int) -> dict:
    """modelopt's INT4_AWQ_CFG (awq_lite, int4 weights, input quantizers off) with block size = group_size."""
    import modelopt.torch.quantization as mtq

    cfg = copy.deepcopy(mtq.INT4_AWQ_CFG)
    entries = cfg["quant_cfg"]
    hits = 0
    for e in entries if isinstance(entries, list) else []:
        blocks = (e.get("cfg") or {}).get("block_sizes") if isinstance(e.get("cfg"), dict) else None
        if e.get("quantizer_name") == "*weight_quantizer" and blocks:
            blocks[-1] = group_size
            hits += 1
    if isinstance(entries, dict):  # older modelopt: {"*weight_quantizer": {...}, ...}
        wq = entries.get("*weight_quantizer") or {}
        if wq.get("block_sizes"):
            wq["block_sizes"][-1] = group_size
            hits += 1
    if hits != 1:
        raise RuntimeError(f"modelopt's INT4_AWQ_CFG has an unexpected layout; cannot set the block size: {entries!r}")
    return cfg


def _to_model(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    return {k: (v.to(device=device, dtype=dtype) if torch.is_tensor(v) and v.is_floating_point()
                else v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def calibration_device(lm: PreTrainedModel, dtype: str) -> PreTrainedModel:
    """The LM on the GPU in the engine's dtype ("float16" | "bfloat16") for calibration when there is one
    (the forward loop sends every batch to the model's device and dtype); on CPU it stays as it is."""
    if not torch.cuda.is_available():
        return lm
    return lm.to(device="cuda", dtype=EXPORT_DTYPES[dtype])


def quantize_awq(lm: PreTrainedModel, calib_batches: Iterable[dict], group_size: int = 128) -> PreTrainedModel:
    """AWQ W4A16 (modelopt awq_lite) calibrated on real samples; returns the fake-quantized model (in place).

    Args:
        lm: a causal LM (from extract_causal_lm).
        calib_batches: model kwargs per forward, e.g. {"inputs_embeds": [1, S, D], "attention_mask": [1, S]}
            with the visual rows already in place, so multimodal prompts calibrate the scales.
        group_size: int4 block size along the input features.
    """
    import modelopt.torch.quantization as mtq

    check_awq_settings(lm.config, group_size)
    t0 = time.perf_counter()
    lm = mtq.quantize(lm, awq_config(group_size), calibration_loop(lm, calib_batches, "AWQ"))
    log.info("AWQ calibration took %.1f s", time.perf_counter() - t0)
    return lm


def calibration_loop(lm: PreTrainedModel, calib_batches: Iterable[dict], what: str):
    """modelopt's forward_loop: every calibration batch through the model, on its device and dtype.

    Args:
        lm: the model being quantized.
        calib_batches: model kwargs per forward (see quantize_awq).
        what: the algorithm's name, for the error when there are no samples.
    """
    batches = list(calib_batches)
    if not batches:
        raise ConfigError(f"{what} calibration needs at least one sample; quantization.num_samples / calib_data "
                          "gave none")
    p = next(lm.parameters())

    def forward_loop(model):
        with torch.no_grad():
            for b in batches:
                model(**_to_model(b, p.device, p.dtype))

    return forward_loop


def quantize_fp8(lm: PreTrainedModel, calib_batches: Iterable[dict]) -> PreTrainedModel:
    """FP8 (E4M3) weights and activations with per-tensor scales (modelopt FP8_DEFAULT_CFG), calibrated on
    real samples; returns the fake-quantized model (in place). Engines run it on Hopper or newer GPUs.

    Args:
        lm: a causal LM (from extract_causal_lm).
        calib_batches: model kwargs per forward (see quantize_awq).
    """
    import modelopt.torch.quantization as mtq

    t0 = time.perf_counter()
    lm = mtq.quantize(lm, copy.deepcopy(mtq.FP8_DEFAULT_CFG), calibration_loop(lm, calib_batches, "FP8"))
    log.info("FP8 calibration took %.1f s", time.perf_counter() - t0)
    return lm


def quantize(lm: PreTrainedModel, algorithm: str, calib_batches: Iterable[dict], group_size: int = 128
             ) -> PreTrainedModel:
    """quantize_awq (algorithm "awq") or quantize_fp8 ("fp8"); ConfigError names the supported ones otherwise."""
    if algorithm == "awq":
        return quantize_awq(lm, calib_batches, group_size)
    if algorithm == "fp8":
        return quantize_fp8(lm, calib_batches)
    raise ConfigError(f"quantization.algorithm={algorithm!r} is not supported; choose one of ['awq', 'fp8']")


def rope_fields(text_config) -> dict:
    """rotary_base / rotary_scaling of a TensorRT-LLM Llama checkpoint, from a transformers (4 or 5) config.

    TensorRT-LLM reads them in LLaMAConfig (tensorrt_llm/models/llama/config.py) and its attention
    layer takes the scaling's "type" (or "rope_type") through RotaryScalingType.from_string, which
    knows linear, dynamic, llama3, yarn, longrope, … but not transformers' "default": unscaled RoPE
    must be written as rotary_scaling null. transformers 5 keeps rope_theta and the scaling in
    `rope_parameters` (4.x: `rope_theta` and `rope_scaling`); modelopt 0.47 reads only the 4.x
    names, so it would leave the base at TensorRT-LLM's default 10000.
    """
    params = dict(getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {})
    theta = params.pop("rope_theta", None) or getattr(text_config, "rope_theta", None) or 10000.0
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    if rope_type == "default":
        return {"rotary_base": float(theta), "rotary_scaling": None}
    return {"rotary_base": float(theta), "rotary_scaling": {"type": rope_type, **params}}


def export_trtllm_checkpoint(lm: PreTrainedModel, out_dir: str | Path, dtype: str, tp_size: int = 1,
                             pp_size: int = 1) -> dict:
    """Write a TensorRT-LLM checkpoint (config.json + rank{r}.safetensors) with modelopt; returns config.json.

    Works for a model quantized by quantize_awq (W4A16_AWQ) or not (plain dtype weights). For AWQ the
    export resmooths the model in place (q/k/v and gate/up get one shared pre_quant_scale, weights are
    requantized), so the fake-quantized model that matches the checkpoint is the one after this call.

    Args:
        lm: a Llama/Mistral causal LM (fake-quantized or not).
        out_dir: directory to write (created).
        dtype: "float16" | "bfloat16": the dtype of the unquantized tensors (and the engine).
        tp_size: tensor parallel size (rank files = tp_size * pp_size).
        pp_size: pipeline parallel size.
    """
    from modelopt.torch.export import export_tensorrt_llm_checkpoint as _export

    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"TensorRT-LLM checkpoint dtype={dtype!r} is not valid; choose one of "
                          f"{sorted(EXPORT_DTYPES)} (a float32 model is exported as float16)")
    check_parallel(lm.config, tp_size, pp_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_before = lm.config.to_dict()
    with torch.no_grad():
        _export(lm, decoder_type="llama", dtype=EXPORT_DTYPES[dtype], export_dir=out,
                inference_tensor_parallel=tp_size, inference_pipeline_parallel=pp_size)
    for k, v in config_before.items():  # modelopt pads config.vocab_size in place (the tensors stay unpadded)
        if getattr(lm.config, k, None) != v:
            setattr(lm.config, k, v)
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(rope_fields(lm.config))  # whatever modelopt wrote for them (see rope_fields)
    path.write_text(json.dumps(cfg, indent=4) + "\n")
    ranks = sorted(p.name for p in out.glob("rank*.safetensors"))
    if len(ranks) != tp_size * pp_size or cfg.get("dtype") != dtype:
        raise RuntimeError(f"modelopt wrote {ranks} with dtype {cfg.get('dtype')!r}; expected "
                           f"{tp_size * pp_size} rank files in {dtype}")
    return cfg


def _parallel_problems(text_config, tp_size: int, pp_size: int) -> list[str]:
    heads = int(text_config.num_attention_heads)
    kv = int(getattr(text_config, "num_key_value_heads", None) or heads)
    if tp_size < 1 or pp_size < 1:
        return [f"tensor_model_parallel_size={tp_size} and pipeline_model_parallel_size={pp_size} must be >= 1"]
    return [f"{name}={n} is not divisible by {what}={size}" for name, n, what, size in (
        ("num_attention_heads", heads, "tensor_model_parallel_size", tp_size),
        ("num_key_value_heads", kv, "tensor_model_parallel_size", tp_size),
        ("intermediate_size", int(text_config.intermediate_size), "tensor_model_parallel_size", tp_size),
        ("num_hidden_layers", int(text_config.num_hidden_layers), "pipeline_model_parallel_size", pp_size),
    ) if n % size]


def check_parallel(text_config, tp_size: int, pp_size: int) -> None:
    """ConfigError when the heads / MLP / layers cannot be split over tp_size x pp_size ranks.

    Args:
        text_config: the LLM's transformers config.
        tp_size: tensor parallel size.
        pp_size: pipeline parallel size.
    """
    problems = _parallel_problems(text_config, tp_size, pp_size)
    if problems:
        raise ConfigError("cannot split the LLM for TensorRT-LLM: " + "; ".join(problems))


def trtllm_available() -> Optional[str]:
    """None when trtllm-build can run here, else the reason it cannot."""
    from engine_build.vision import cuda_unavailable_reason

    if shutil.which("trtllm-build") is None:
        return "trtllm-build is not on PATH (tensorrt_llm is not installed)"
    return cuda_unavailable_reason()


def run_trtllm_build(cmd: list) -> Optional[dict]:
    """Run the trtllm-build command; None when tensorrt_llm / CUDA are absent (the caller records the command).

    Args:
        cmd: from engine_build.commands.trtllm_build_command.
    """
    reason = trtllm_available()
    if reason is not None:
        log.info("not running trtllm-build: %s", reason)
        return None
    cmd = [str(c) for c in cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"trtllm-build failed (exit {proc.returncode}):\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")
    out_dir = cmd[cmd.index("--output_dir") + 1]
    return {"engine_dir": out_dir, "command": cmd, "seconds": round(time.perf_counter() - t0, 1)}
