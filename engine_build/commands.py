"""Exact trtexec / trtllm-build command lines for the GPU steps (recorded in the manifest and printed where they cannot run).

Flags checked against NVIDIA/TensorRT-LLM tensorrt_llm/commands/build.py (`--max_seq_len`,
`--max_prompt_embedding_table_size` alias `--max_multimodal_len`, `--kv_cache_type paged`; the older
`--paged_kv_cache` is deprecated there and `--max_output_len` is gone) and tensorrt_llm/plugin/plugin.py
(`--gemm_plugin`, `--gpt_attention_plugin`, `--remove_input_padding`, `--use_paged_context_fmha` take
enable/disable or a dtype / "auto").
"""
from __future__ import annotations

from pathlib import Path

from videoneva.errors import ConfigError

INPUT_NAME = "pixel_values"  # the vision ONNX input (engine_build/vision.py)

# our precision names (trainer.precision and dtype strings) → TensorRT precision
_TRT_PRECISION = {"32": "fp32", "fp32": "fp32", "float32": "fp32", "16": "fp16", "fp16": "fp16",
                  "float16": "fp16", "bf16": "bf16", "bfloat16": "bf16"}
_LLM_DTYPES = ("float16", "bfloat16", "float32")


def trt_precision(precision: str) -> str:
    """'fp32' | 'fp16' | 'bf16' from trainer.precision ('32', '16', 'bf16') or a dtype name."""
    p = _TRT_PRECISION.get(str(precision))
    if p is None:
        raise ConfigError(f"precision={precision!r} is not valid for TensorRT; choose one of {sorted(_TRT_PRECISION)}")
    return p


def frame_profile(num_frames: int, max_batch_size: int) -> tuple[int, int, int]:
    """(min, opt, max) frames of the vision plan's optimisation profile: 1, one video, a full batch of videos."""
    if num_frames < 1 or max_batch_size < 1:
        raise ConfigError(f"num_frames={num_frames} and max_batch_size={max_batch_size} must be >= 1")
    return 1, num_frames, max_batch_size * num_frames


def trtexec_command(onnx_path, plan_path, num_frames: int, max_batch_size: int, image_size: int,
                    precision: str) -> list[str]:
    """trtexec line that builds vision.plan from vision.onnx (same profile as build_vision_plan).

    Args:
        onnx_path: the exported vision encoder (input "pixel_values" [frames, 3, H, W]).
        plan_path: where the plan goes.
        num_frames: frames per video (the profile's opt).
        max_batch_size: videos per batch (profile max = max_batch_size × num_frames).
        image_size: H = W of a frame.
        precision: '32' | '16' | 'bf16' (or a dtype name).
    """
    lo, opt, hi = frame_profile(num_frames, max_batch_size)
    shape = f"3x{image_size}x{image_size}"
    cmd = ["trtexec", f"--onnx={Path(onnx_path)}", f"--saveEngine={Path(plan_path)}",
           f"--minShapes={INPUT_NAME}:{lo}x{shape}", f"--optShapes={INPUT_NAME}:{opt}x{shape}",
           f"--maxShapes={INPUT_NAME}:{hi}x{shape}"]
    p = trt_precision(precision)
    if p != "fp32":
        cmd.append(f"--{p}")  # TensorRT 10.x builder flag (TensorRT 11 needs a 16-bit ONNX + --stronglyTyped)
    return cmd


def max_multimodal_len(max_batch_size: int, num_frames: int, image_token_len: int) -> int:
    """Rows of the prompt-embedding table the engine must hold: every request of a full batch with a video.

    Args:
        max_batch_size: requests per engine batch.
        num_frames: frames per video.
        image_token_len: visual tokens per frame (after pooling).
    """
    for name, v in (("max_batch_size", max_batch_size), ("num_frames", num_frames),
                    ("image_token_len", image_token_len)):
        if int(v) < 1:
            raise ConfigError(f"{name}={v} must be >= 1 to size max_multimodal_len")
    return int(max_batch_size) * int(num_frames) * int(image_token_len)


def trtllm_build_command(ckpt_dir, engine_dir, max_batch_size: int, max_input_len: int, max_output_len: int,
                         max_multimodal_len: int, dtype: str, max_num_tokens: int | None = None,
                         workers: int = 1, gemm_plugin: str | None = None) -> list[str]:
    """trtllm-build line for the LLM engine: gemm plugin, paged KV cache, packed inputs, prompt table.

    Args:
        ckpt_dir: TensorRT-LLM checkpoint (config.json + rank*.safetensors).
        engine_dir: output directory.
        max_batch_size: requests per batch.
        max_input_len: prompt tokens including the media placeholder positions.
        max_output_len: generated tokens; max_seq_len = max_input_len + max_output_len.
        max_multimodal_len: prompt-embedding-table rows (see max_multimodal_len()).
        dtype: the checkpoint dtype; the gemm plugin runs in it.
        max_num_tokens: tokens per batch after padding removal (trtllm-build's default when None).
        workers: parallel engine builds (one per GPU) for tp/pp checkpoints.
        gemm_plugin: the gemm plugin's type when it is not `dtype`: "auto" for an FP8 checkpoint, as
            NVIDIA/TensorRT-LLM examples/models/core/llama/README.md builds FP8 engines.
    """
    if dtype not in _LLM_DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not valid for trtllm-build; choose one of {list(_LLM_DTYPES)}")
    for name, v in (("max_batch_size", max_batch_size), ("max_input_len", max_input_len),
                    ("max_output_len", max_output_len), ("workers", workers)):
        if int(v) < 1:
            raise ConfigError(f"{name}={v} must be >= 1")
    if max_multimodal_len < 0:
        raise ConfigError(f"max_multimodal_len={max_multimodal_len} must be >= 0")
    cmd = ["trtllm-build", "--checkpoint_dir", str(Path(ckpt_dir)), "--output_dir", str(Path(engine_dir)),
           "--max_batch_size", str(max_batch_size), "--max_input_len", str(max_input_len),
           "--max_seq_len", str(max_input_len + max_output_len),
           "--gemm_plugin", gemm_plugin or dtype, "--gpt_attention_plugin", dtype,
           "--kv_cache_type", "paged", "--remove_input_padding", "enable", "--use_paged_context_fmha", "enable"]
    if max_multimodal_len > 0:
        cmd += ["--max_multimodal_len", str(max_multimodal_len)]
    if max_num_tokens is not None:
        cmd += ["--max_num_tokens", str(max_num_tokens)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    return cmd
