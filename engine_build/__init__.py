"""Checkpoint to engine directory: ONNX/TensorRT vision encoder, AWQ TensorRT-LLM LLM."""
