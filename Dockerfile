# GPU image: Triton Inference Server with TensorRT-LLM, videoneva in its own virtual environment.
#
#   docker build -t videoneva:gpu .
#   docker run --gpus all --shm-size=4g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#       -v /path/to/ckpt:/ckpt -v /path/to/engines:/engines videoneva:gpu /ckpt /engines/model \
#       [build.KEY=VALUE …] [serve.KEY=VALUE …]
#
# Written for nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3: TensorRT-LLM
# 1.0.0, TensorRT 10.11, CUDA 12.9 (driver 575 or a data-center driver with forward compatibility),
# Python 3.12. Not yet built or run on a GPU: see docs/gpu-image.md.
#
# Two Python environments, because TensorRT-LLM up to 1.2 pins transformers 4.x and videoneva
# needs transformers 5:
#   - the container's python3: TensorRT-LLM with its own transformers. It runs `trtllm-build` and,
#     through VIDEONEVA_TRTLLM_PYTHON, the TensorRT-LLM engine at serving time
#     (videoneva/runtime/trtllm_worker.py, a worker process the `llm` model talks to over pipes).
#   - /opt/videoneva/venv (--system-site-packages, so it sees the container's torch and tensorrt):
#     videoneva with transformers 5, nvidia-modelopt, onnxruntime-gpu and DALI for CUDA 12. It runs
#     `videoneva build` / `serve` and every Triton python model.
ARG TRITON_TRTLLM_IMAGE=nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3
FROM ${TRITON_TRTLLM_IMAGE}
ARG TRITON_TRTLLM_IMAGE

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    VIDEONEVA_IMAGE=${TRITON_TRTLLM_IMAGE} \
    VIDEONEVA_TRTLLM_PYTHON=/usr/bin/python3
WORKDIR /opt/videoneva
COPY pyproject.toml README.md Makefile ./
COPY videoneva ./videoneva
COPY engine_build ./engine_build
COPY triton_repo ./triton_repo
# for `make gpu-check GPU_PYTHON=/opt/videoneva/venv/bin/python` inside the image
COPY benchmarks ./benchmarks
COPY tests ./tests
RUN python3 -m venv --system-site-packages /opt/videoneva/venv \
 && /opt/videoneva/venv/bin/pip install 'transformers>=5.0' 'nvidia-modelopt[torch]>=0.47' \
 && /opt/videoneva/venv/bin/pip install -e '.[gpu,serve,dali-cuda12,quant,dev]' \
 && /opt/videoneva/venv/bin/python -c "import transformers, videoneva; print('transformers', transformers.__version__)" \
 && /usr/bin/python3 -c "import tensorrt_llm; print('tensorrt_llm', tensorrt_llm.__version__)"
# venv first: `videoneva` and the Triton stubs run in it; `tritonserver` (/opt/tritonserver/bin) and
# `trtllm-build` (the container's python3) stay the container's own.
ENV PATH=/opt/videoneva/venv/bin:${PATH}

EXPOSE 8000 8001 8002
ENTRYPOINT ["/opt/videoneva/venv/bin/python", "-m", "engine_build.image_entry"]
