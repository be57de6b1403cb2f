"""Vision encoder artifacts: ONNX export (dynamic frames axis, checked against torch) and the TensorRT plan.

The exported graph is VisionFeatures (videoneva/model/vision.py): CLIP tower with hidden states →
penultimate layer, CLS dropped → optional avg-pool of each frame's patch grid → projector. Not
`get_image_features`, whose ONNX export bakes in a per-image split (it fails at run time for another
frame count).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from engine_build.commands import INPUT_NAME, frame_profile, trt_precision
from videoneva.errors import ConfigError
from videoneva.model.vision import VisionFeatures

log = logging.getLogger(__name__)

OUTPUT_NAME = "features"
FRAMES_AXIS = "frames"


class TensorRTUnavailable(RuntimeError):
    """TensorRT (the Python package) or a CUDA device is missing: the plan cannot be built here."""


class ExportMismatch(RuntimeError):
    """The exported graph does not compute what the torch module computes."""


class VisionEncoderModule(VisionFeatures):
    """pixel_values [F, 3, H, W] fp32 → features [F, T, D_llm]: the module that is exported.

    T = (H / patch / frame_token_pool)^2; pooling averages each frame's patch grid before the projector.

    Args:
        llava: a transformers LlavaForConditionalGeneration (fp32).
        frame_token_pool: 1 | 2 | 4 (must divide the patch grid).
    """

    def __init__(self, llava, frame_token_pool: int = 1):
        if frame_token_pool not in (1, 2, 4):
            raise ConfigError(f"frame_token_pool={frame_token_pool} is not valid; choose one of [1, 2, 4]")
        try:
            super().__init__(llava, frame_token_pool)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.hidden_size = int(llava.config.text_config.hidden_size)


def _check_model(model, image_size: int) -> None:
    vc = model.config.vision_config
    if image_size != vc.image_size:
        raise ConfigError(f"image_size={image_size} does not match the vision tower ({vc.image_size} px; its "
                          "position embeddings are fixed to that size)")
    dtypes = {p.dtype for p in model.model.vision_tower.parameters()} | \
        {p.dtype for p in model.model.multi_modal_projector.parameters()}
    if dtypes != {torch.float32}:
        raise ConfigError(f"export the vision encoder from an fp32 model (got {sorted(map(str, dtypes))}); "
                          "TensorRT picks fp16/bf16 when it builds the plan")


def onnx_vs_torch(module: torch.nn.Module, onnx_path: str | Path, frames: tuple[int, ...], image_size: int,
                  seed: int = 0) -> float:
    """Max |onnxruntime − torch| over random inputs with each frame count in `frames` (CPU, fp32).

    Args:
        module: the torch module that was exported.
        onnx_path: the ONNX file.
        frames: frame counts to run (more than one value exercises the dynamic axis).
        image_size: H = W of the inputs.
        seed: for the random pixel values.
    """
    from videoneva.runtime.onnx_backend import onnxruntime_module

    ort = onnxruntime_module()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(torch.get_num_threads(), 1)
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for f in frames:
        x = torch.randn(f, 3, image_size, image_size, generator=g)  # (F, 3, H, W)
        with torch.inference_mode():
            ref = module(x).numpy()  # (F, T, D)
        (out,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if out.shape != ref.shape:
            raise ExportMismatch(f"{onnx_path}: {f} frames gave {out.shape}, torch gives {ref.shape}")
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def export_vision_onnx(model, out_path: str | Path, image_size: int, frame_token_pool: int = 1, opset: int = 17,
                       check_frames: tuple[int, ...] = (1, 3), atol: float = 1e-3) -> dict:
    """Export vision tower + projector to ONNX with a dynamic frames axis; check it; compare with torch.

    Args:
        model: a transformers LlavaForConditionalGeneration in fp32.
        out_path: the .onnx file to write (its folder is created).
        image_size: frame size H = W (must equal the tower's).
        frame_token_pool: spatial pooling of each frame's token grid (1 | 2 | 4).
        opset: ONNX opset.
        check_frames: frame counts run through onnxruntime and torch after export.
        atol: largest max-abs difference accepted (ExportMismatch above it).

    Returns:
        {onnx_path, opset, input, output, dynamic_axis, tokens_per_frame, hidden_size, frame_token_pool,
         image_size, max_abs_diff, check_frames, onnx_bytes, export_seconds}
    """
    import onnx

    _check_model(model, image_size)
    module = VisionEncoderModule(model, frame_token_pool).eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.zeros(2, 3, image_size, image_size)  # 2 frames: 1 would be specialised by torch.export
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(module, (sample,), str(out), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes={"pixel_values": {0: torch.export.Dim(FRAMES_AXIS, min=1)}},
                          opset_version=opset, dynamo=True, external_data=False, verbose=False)
    export_s = time.perf_counter() - t0
    onnx.checker.check_model(str(out), full_check=True)
    proto = onnx.load(str(out), load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if dims[0] != FRAMES_AXIS or [i.name for i in proto.graph.input] != [INPUT_NAME]:
        raise ExportMismatch(f"{out}: input is {[i.name for i in proto.graph.input]} {dims}, expected "
                             f"{INPUT_NAME} [{FRAMES_AXIS}, 3, {image_size}, {image_size}]")
    diff = onnx_vs_torch(module, out, tuple(check_frames), image_size)
    if not diff <= atol:
        raise ExportMismatch(f"{out}: onnxruntime differs from torch by {diff:.3g} (> {atol})")
    log.info("vision.onnx: %d frames-dynamic, max |ort - torch| = %.2e, export %.1f s", len(check_frames), diff, export_s)
    return {"onnx_path": out, "opset": opset, "input": INPUT_NAME, "output": OUTPUT_NAME,
            "dynamic_axis": FRAMES_AXIS, "tokens_per_frame": module.tokens, "hidden_size": module.hidden_size,
            "frame_token_pool": frame_token_pool, "image_size": image_size, "max_abs_diff": diff,
            "check_frames": list(check_frames), "onnx_bytes": out.stat().st_size,
            "export_seconds": round(export_s, 2)}


def cuda_unavailable_reason() -> str | None:
    """None when a CUDA device is usable, else why not (shared by the TensorRT and TRT-LLM checks)."""
    try:
        if not torch.cuda.is_available():
            return "no CUDA device"
    except RuntimeError as exc:
        return f"CUDA unusable: {exc}"
    return None


def tensorrt_unavailable_reason() -> str | None:
    """None when a TensorRT plan can be built here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"tensorrt is not installed ({exc})"
    return cuda_unavailable_reason()


def build_vision_plan(onnx_path: str | Path, plan_path: str | Path, num_frames: int, max_batch_size: int,
                      precision: str, workspace_gib: float = 4.0) -> dict:
    """TensorRT plan from vision.onnx through the TensorRT Python API; TensorRTUnavailable without TRT/CUDA.

    One optimisation profile on the frames axis: min 1, opt num_frames (one video), max
    max_batch_size × num_frames (a full batch of videos).

    Args:
        onnx_path: from export_vision_onnx.
        plan_path: the serialized engine to write.
        num_frames: frames per video.
        max_batch_size: videos per batch.
        precision: '32' | '16' | 'bf16' (or a dtype name).
        workspace_gib: builder workspace limit.
    """
    lo, opt, hi = frame_profile(num_frames, max_batch_size)
    p = trt_precision(precision)
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    low_bits = p != "fp32"
    flag = getattr(trt.BuilderFlag, p.upper(), None) if low_bits else None
    src = Path(onnx_path)
    network_flags = 0
    if low_bits and flag is None:
        # TensorRT 11 removed the FP16/BF16 builder flags: cast the graph with modelopt AutoCast, build strongly typed
        src = _autocast_onnx(src, Path(plan_path).with_suffix(f".{p}.onnx"), p)
        network_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(src)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {src}: {errors}")
    inp = network.get_input(0)
    _, c, h, w = tuple(inp.shape)  # (-1, 3, H, W)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if flag is not None:
        config.set_flag(flag)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo, c, h, w), (opt, c, h, w), (hi, c, h, w))
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a plan from {src} (see the TensorRT log above)")
    plan = Path(plan_path)
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(bytes(serialized))
    return {"plan_path": plan, "precision": p, "profile_frames": [lo, opt, hi], "image_size": int(h),
            "tensorrt": trt.__version__, "onnx": str(src), "build_seconds": round(time.perf_counter() - t0, 1)}


def _autocast_onnx(src: Path, dst: Path, precision: str) -> Path:
    """fp16/bf16 copy of an fp32 ONNX (modelopt AutoCast, fp32 I/O kept) for strongly typed TensorRT builds."""
    import onnx

    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as exc:
        raise TensorRTUnavailable(f"this TensorRT has no {precision.upper()} builder flag (TensorRT 11); a {precision} "
                                  "plan needs nvidia-modelopt[onnx] (AutoCast) to cast the ONNX first") from exc
    low = {"fp16": "fp16", "bf16": "bf16"}[precision]
    model = convert_to_mixed_precision(str(src), low_precision_type=low, keep_io_types=True)
    onnx.save(model, str(dst))
    return dst
