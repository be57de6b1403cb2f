"""TensorRT vision encoder: runs engine_dir/vision/vision.plan (engine_build/vision.py) on a CUDA device.

The plan is vision tower + projector with input `pixel_values` [frames, 3, H, W] and output
`features` [frames, T, D_llm]; one optimisation profile on the frames axis (1 … max_batch_size ×
num_frames). `tensorrt` is imported only when an encoder is built, so CPU users never need it.
Buffers are torch CUDA tensors handed to TensorRT by address (TensorRT 10 name-based I/O API:
set_input_shape / set_tensor_address / execute_async_v3).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from videoneva.errors import CheckpointError, VideoNevaError

INPUT_NAME = "pixel_values"   # engine_build/commands.py INPUT_NAME
OUTPUT_NAME = "features"      # engine_build/vision.py OUTPUT_NAME

# TensorRT DataType member names → torch dtypes (the I/O dtypes a vision plan can have)
_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8}


class BackendUnavailable(VideoNevaError, RuntimeError):
    """A GPU backend was asked for but this machine cannot run it (library, CUDA or artifact missing)."""


def cuda_unavailable_reason() -> Optional[str]:
    """None when a CUDA device is usable, else why not."""
    try:
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch (torch.cuda.is_available() is False)"
    except RuntimeError as exc:  # a broken driver raises instead of returning False
        return f"CUDA is unusable: {exc}"
    return None


def tensorrt_unavailable_reason() -> Optional[str]:
    """None when a TensorRT plan can run here, else what is missing (the module or CUDA)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return (f"the `tensorrt` Python package is not installed ({exc}); install the TensorRT wheel that "
                "matches the one the plan was built with (pip install tensorrt, NVIDIA's index)")
    return cuda_unavailable_reason()


def torch_dtype(trt_dtype) -> torch.dtype:
    """torch dtype of a tensorrt.DataType (or its member name: 'FLOAT', 'HALF', 'BF16', …)."""
    name = trt_dtype if isinstance(trt_dtype, str) else getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1])
    if name not in _TRT_TO_TORCH:
        raise CheckpointError(f"vision.plan has an I/O tensor of TensorRT type {name}; expected one of "
                              f"{sorted(_TRT_TO_TORCH)}")
    return _TRT_TO_TORCH[name]


def frame_chunks(num_frames: int, max_frames: int) -> list[slice]:
    """Consecutive slices of at most max_frames frames covering num_frames (the plan's profile maximum).

    Args:
        num_frames: frames to encode (>= 1).
        max_frames: largest frames-axis size of the plan's optimisation profile.
    """
    if num_frames < 1:
        raise ValueError(f"pixel_values must hold at least one frame, got {num_frames}")
    if max_frames < 1:
        raise CheckpointError(f"vision.plan profile allows at most {max_frames} frames")
    return [slice(i, min(i + max_frames, num_frames)) for i in range(0, num_frames, max_frames)]


def check_pixel_shape(shape: tuple, image_size: tuple[int, int]) -> None:
    """ValueError unless shape is [F, 3, H, W] with the plan's H, W."""
    if len(shape) != 4 or shape[1] != 3 or tuple(shape[2:]) != tuple(image_size):
        raise ValueError(f"pixel_values must be [F, 3, {image_size[0]}, {image_size[1]}] for this vision.plan, "
                         f"got {list(shape)}")


class TensorRTVisionEncoder:
    """pixel_values [F, 3, H, W] → features [F, T, D] through a TensorRT plan on CUDA.

    Features come back on the GPU in the plan's output dtype (fp32, or fp16/bf16 for a strongly
    typed plan); the LLM backends cast them to their own dtype and device. More frames than the
    profile's maximum are encoded in chunks.

    Args:
        path: the serialized plan (engine_dir/vision/vision.plan).
        tokens_per_frame: T, from media.json (checked against every output).
        hidden_size: D, the LLM hidden size (checked against every output).
        device: CUDA device the plan runs on.
    """

    def __init__(self, path: str | Path, tokens_per_frame: int, hidden_size: int, device: str | torch.device = "cuda"):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"vision plan not found: {path}; build it on a GPU machine with `videoneva build … "
                                  "vision.backend=tensorrt` (or the trtexec command in manifest.json)")
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"cannot run {path} with TensorRT: {reason}")
        import tensorrt as trt

        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendUnavailable(f"a TensorRT plan runs on a CUDA device, not {self.device}")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise CheckpointError(f"TensorRT {trt.__version__} could not deserialize {path}: a plan only runs "
                                      "with the TensorRT version and GPU family it was built with; rebuild it here")
            names = {self.engine.get_tensor_name(i): self.engine.get_tensor_mode(self.engine.get_tensor_name(i))
                     for i in range(self.engine.num_io_tensors)}
            expected = {INPUT_NAME: trt.TensorIOMode.INPUT, OUTPUT_NAME: trt.TensorIOMode.OUTPUT}
            if names != expected:
                raise CheckpointError(f"{path}: I/O tensors are {sorted(names)}; expected input {INPUT_NAME!r} and "
                                      f"output {OUTPUT_NAME!r} (a plan built by engine_build/vision.py)")
            self.in_dtype = torch_dtype(self.engine.get_tensor_dtype(INPUT_NAME))
            self.out_dtype = torch_dtype(self.engine.get_tensor_dtype(OUTPUT_NAME))
            lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(INPUT_NAME, 0))
            self.min_frames, self.max_frames = int(lo[0]), int(hi[0])
            self.image_size = (int(hi[2]), int(hi[3]))
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        self.path, self.tokens_per_frame, self.hidden_size = path, tokens_per_frame, hidden_size

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """One execution: x [f, 3, H, W] on the device in the input dtype → [f, T, D]."""
        ctx = self.context
        ctx.set_input_shape(INPUT_NAME, tuple(x.shape))
        out_shape = tuple(ctx.get_tensor_shape(OUTPUT_NAME))
        if out_shape[1:] != (self.tokens_per_frame, self.hidden_size):
            raise CheckpointError(f"{self.path} returns {list(out_shape)}, expected [F, {self.tokens_per_frame}, "
                                  f"{self.hidden_size}] (media.json image_token_len / hidden_size)")
        out = torch.empty(out_shape, dtype=self.out_dtype, device=self.device)
        ctx.set_tensor_address(INPUT_NAME, x.data_ptr())
        ctx.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue {self.path} for input {list(x.shape)} (see the log above)")
        return out

    @torch.inference_mode()
    def encode(self, pixel_values: np.ndarray) -> torch.Tensor:
        check_pixel_shape(tuple(np.shape(pixel_values)), self.image_size)
        host = torch.as_tensor(np.ascontiguousarray(pixel_values, dtype=np.float32))
        outs, keep = [], []
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            # copy and execute on one stream, so the plan never reads a half-copied input
            x = host.to(self.device, non_blocking=False).to(self.in_dtype).contiguous()  # (F, 3, H, W)
            for sl in frame_chunks(x.shape[0], self.max_frames):
                chunk = x[sl].contiguous()
                keep.append(chunk)  # alive until the stream is done with it
                outs.append(self._run(chunk))
            features = outs[0] if len(outs) == 1 else torch.cat(outs)  # (F, T, D)
        self.stream.synchronize()
        return features
