"""Run a TensorRT-LLM engine in another Python environment: `python3 trtllm_worker.py ENGINE_DIR [KV_FRACTION]`,
and WorkerRunner, its client in the videoneva process.

TensorRT-LLM releases up to 1.2 pin transformers 4.x, while videoneva needs transformers 5; one
process cannot import both. With VIDEONEVA_TRTLLM_PYTHON set (the GPU image sets it to the Triton
container's own python3), TensorRTLLMLanguageModel starts this file under that interpreter and
sends it requests. The worker imports only the standard library, torch and tensorrt_llm (never
videoneva), runs ModelRunnerCpp, and answers on its stdout; everything else it (or TensorRT-LLM)
prints goes to stderr.

Frames both ways: an 8-byte big-endian length, then a pickle. First frame from the worker: the
engine's sizes (`runner_info`) or {"error": …}. Then per request in: {"ids", "table", "kwargs"};
out: {"out": …} per partial output (one when not streaming), then {"done": True}, or {"error": …}.
"""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO, Iterator, Optional


def write_frame(fh: BinaryIO, obj) -> None:
    data = pickle.dumps(obj, protocol=4)
    fh.write(struct.pack(">Q", len(data)) + data)
    fh.flush()


def read_frame(fh: BinaryIO):
    """The next object, or None at end of stream."""
    head = fh.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack(">Q", head)
    data = fh.read(n)
    if len(data) < n:
        return None
    return pickle.loads(data)


def pack_tensor(t) -> Optional[dict]:
    """A torch tensor as plain bytes + dtype name + shape (any dtype, bfloat16 included)."""
    if t is None:
        return None
    import torch

    c = t.detach().to("cpu").contiguous()
    return {"dtype": str(c.dtype).replace("torch.", ""), "shape": list(c.shape),
            "data": c.view(torch.uint8).numpy().tobytes() if c.numel() else b""}


def unpack_tensor(d: Optional[dict]):
    if d is None:
        return None
    import torch

    flat = torch.frombuffer(bytearray(d["data"]), dtype=torch.uint8) if d["data"] else torch.zeros(0, dtype=torch.uint8)
    return flat.view(getattr(torch, d["dtype"])).reshape(d["shape"])


def runner_info(r) -> dict:
    """What TensorRTLLMLanguageModel needs to know about a ModelRunnerCpp."""
    return {"vocab_size": int(r.vocab_size), "hidden_size": int(r.hidden_size) * int(r.mapping.tp_size),
            "max_seq_len": int(r.max_seq_len), "max_input_len": int(r.max_input_len),
            "max_prompt_embedding_table_size": int(r.max_prompt_embedding_table_size),
            "dtype": str(r.dtype).replace("torch.", "")}


def slim(out: dict) -> dict:
    """A ModelRunnerCpp output dict with beam 0 of request 0 as lists (what OutputReader reads)."""
    lp = out.get("log_probs")
    return {"output_ids": [[out["output_ids"][0][0].tolist()]],
            "sequence_lengths": [[int(out["sequence_lengths"][0][0])]],
            "log_probs": None if lp is None else [[lp[0][0].tolist()]]}


def serve(engine_dir: str, kv_fraction: Optional[float], inp: BinaryIO, out: BinaryIO) -> None:
    try:
        import tensorrt_llm
        import torch
        from tensorrt_llm.runtime import ModelRunnerCpp

        runner = ModelRunnerCpp.from_dir(engine_dir, rank=tensorrt_llm.mpi_rank(),
                                         kv_cache_free_gpu_memory_fraction=kv_fraction)
    except Exception as exc:  # reported to the parent, which names this interpreter
        write_frame(out, {"error": f"{type(exc).__name__}: {exc}"})
        return
    write_frame(out, runner_info(runner))
    while (msg := read_frame(inp)) is not None:
        try:
            ids = torch.tensor(msg["ids"], dtype=torch.int32)
            outputs = runner.generate([ids], prompt_table=unpack_tensor(msg["table"]), **msg["kwargs"])
            for o in ([outputs] if isinstance(outputs, dict) else outputs):
                write_frame(out, {"out": slim(o)})
            write_frame(out, {"done": True})
        except Exception as exc:
            write_frame(out, {"error": f"{type(exc).__name__}: {exc}"})


class WorkerRunner:
    """ModelRunnerCpp.generate's interface in the parent, answered by this file run under another interpreter.

    One request at a time (ModelRunnerCpp.generate is not safe to call from several threads anyway).
    The worker's stderr (TensorRT-LLM's log) goes to this process's stderr.

    Args:
        python: the interpreter with tensorrt_llm (VIDEONEVA_TRTLLM_PYTHON).
        engine_dir: trtllm-build output.
        kv_cache_free_gpu_memory_fraction: as for ModelRunnerCpp.from_dir (None: its default).
    """

    def __init__(self, python: str, engine_dir, kv_cache_free_gpu_memory_fraction: Optional[float] = None):
        from videoneva.runtime.tensorrt_backend import BackendUnavailable

        kv = "none" if kv_cache_free_gpu_memory_fraction is None else str(kv_cache_free_gpu_memory_fraction)
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), str(engine_dir), kv],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()
        info = read_frame(self.proc.stdout)
        if info is None or "error" in info:
            self.close()
            why = info["error"] if info else f"it exited with status {self.proc.returncode}"
            raise BackendUnavailable(f"the TensorRT-LLM worker under {python} could not load {engine_dir}: {why}")
        self.info = info

    def generate(self, batch_input_ids: list, prompt_table=None, **kwargs):
        """As ModelRunnerCpp.generate for one request: the output dict, or a generator of them when streaming."""
        ids = [int(i) for i in batch_input_ids[0]]
        outs = self._exchange({"ids": ids, "table": pack_tensor(prompt_table), "kwargs": kwargs})
        return outs if kwargs.get("streaming") else list(outs)[-1]

    def _next(self) -> dict:
        msg = read_frame(self.proc.stdout)
        if msg is None:
            raise RuntimeError(f"the TensorRT-LLM worker exited (status {self.proc.poll()}); see its log above")
        return msg

    def _exchange(self, request: dict) -> Iterator[dict]:
        with self.lock:
            write_frame(self.proc.stdin, request)
            done = False
            try:
                while True:
                    msg = self._next()
                    done = "error" in msg or bool(msg.get("done"))
                    if "error" in msg:
                        raise RuntimeError(f"TensorRT-LLM worker: {msg['error']}")
                    if done:
                        return
                    yield msg["out"]
            finally:
                while not done:  # a stream left unread: take the rest, so the next request starts clean
                    msg = self._next()
                    done = "error" in msg or bool(msg.get("done"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the worker ends at the end of its input
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> None:
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # the frames' own channel
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())        # anything printed goes to stderr
    kv = float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "none" else None
    serve(sys.argv[1], kv, sys.stdin.buffer, frames)


if __name__ == "__main__":
    main()
