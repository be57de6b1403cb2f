# GPU image: Triton Inference Server with the TensorRT-LLM backend, videoneva, DALI.
#
#   docker build -t videoneva:gpu .
#   docker run --gpus all -p 8001:8001 -v /path/to/ckpt:/ckpt -v /path/to/engines:/engines \
#       videoneva:gpu /ckpt /engines/demo
#
# The entry builds the engine directory from the checkpoint when it is missing (TensorRT vision
# plan + trtllm-build on the GPU), then serves it. This image cannot be built on the CPU-only
# machines this project is developed on (no Docker engine, and the base image and TensorRT /
# TensorRT-LLM wheels come from NVIDIA's registry, which they cannot reach).
ARG TRITON_TRTLLM_IMAGE=nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3
FROM ${TRITON_TRTLLM_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /opt/videoneva
COPY pyproject.toml README.md ./
COPY videoneva ./videoneva
COPY engine_build ./engine_build
COPY triton_repo ./triton_repo
# torch, tensorrt and tensorrt_llm come with the base image; add ours, DALI (NVDEC decode) and modelopt.
RUN python3 -m pip install -e '.[serve,dali,quant]'

COPY <<'ENTRY' /usr/local/bin/videoneva-entry
#!/usr/bin/env bash
# usage: videoneva-entry CHECKPOINT ENGINE_DIR [extra build/serve key=value …]
set -euo pipefail
ckpt=$1 engine=$2; shift 2
if [ ! -f "$engine/manifest.json" ]; then
  videoneva build checkpoint="$ckpt" output="$engine" vision.backend=tensorrt llm.backend=tensorrt_llm \
    quantization.enable="${QUANTIZE:-false}" trainer.precision="${PRECISION:-bf16}" "$@"
fi
exec videoneva serve engine_dir="$engine" host=0.0.0.0 "$@"
ENTRY
RUN chmod +x /usr/local/bin/videoneva-entry
EXPOSE 8000 8001 8002
ENTRYPOINT ["/usr/local/bin/videoneva-entry"]
