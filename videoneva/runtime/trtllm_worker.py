"""TensorRT-LLM's executor for one engine, in this process (ExecutorHost) or in another interpreter
(`python3 trtllm_worker.py ENGINE_DIR OPTIONS_JSON`, driven by WorkerClient).

TensorRT-LLM releases up to 1.2 pin transformers 4.x, while videoneva needs transformers 5; one
process cannot import both. With VIDEONEVA_TRTLLM_PYTHON set (the GPU image sets it to the Triton
container's own python3), the engine's executor runs in a worker under that interpreter. This file
imports only the standard library, torch and tensorrt_llm (never videoneva), so it runs there.

The host enqueues each request (`Executor.enqueue_request`) with its prompt table as
`PromptTuningConfig(embedding_table, input_token_extra_ids)`; the executor batches every request in
flight; one thread routes `await_responses()` by request id to on_response(key, tokens, logprobs,
final, error). Names follow cpp/tensorrt_llm/pybind/executor/{request,executorConfig,executor,
bindings}.cpp. An engine with tp × pp > 1 runs in orchestrator mode (the executor spawns
`tensorrt_llm/bin/executorWorker` ranks) unless this process was launched under mpirun.

Worker frames (both ways an 8-byte big-endian length, then a pickle). From the worker first:
{"info": engine_info} or {"error": …}. In: {"op": "submit", "key", "ids", "table", "fields",
"extra_ids"} | {"op": "cancel", "key"} | {"op": "stats", "key"}. Out: {"key", "tokens", "logprobs",
"final", "error"} per response, {"key", "stats"} per stats request.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Callable, Optional

AWAIT_MS = 100  # the response thread's wait per call (it also notices shutdown this often)
OnResponse = Callable[[str, list, Optional[list], bool, Optional[str]], None]


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


def engine_info(engine_dir) -> dict:
    """What the language model needs to know of a trtllm-build output (its config.json)."""
    config = json.loads((Path(engine_dir) / "config.json").read_text())
    pretrained, build = config.get("pretrained_config", {}), config.get("build_config", {})
    mapping = pretrained.get("mapping", {})
    max_seq = build.get("max_seq_len") or pretrained.get("max_position_embeddings")
    return {"vocab_size": int(pretrained["vocab_size"]), "hidden_size": int(pretrained["hidden_size"]),
            "max_seq_len": int(max_seq), "max_input_len": int(build.get("max_input_len", max_seq)),
            "max_prompt_embedding_table_size": int(build.get("max_prompt_embedding_table_size", 0)),
            "dtype": str(pretrained.get("dtype", "float16")),
            "world_size": int(mapping.get("tp_size", 1)) * int(mapping.get("pp_size", 1))}


class ExecutorHost:
    """TensorRT-LLM's executor on one engine directory, with its response thread.

    Args:
        engine_dir: trtllm-build output.
        options: {"max_batch_size": int | None, "kv_cache_free_gpu_memory_fraction": float | None}.
        on_response: called (key, new token ids, their log-probs, final, error) from the response thread.
    """

    def __init__(self, engine_dir, options: dict, on_response: OnResponse):
        import tensorrt_llm
        from tensorrt_llm.bindings import executor as trtllm

        self.trtllm, self.on_response = trtllm, on_response
        self.info = engine_info(engine_dir)
        parallel = None
        if self.info["world_size"] > 1 and tensorrt_llm.mpi_world_size() == 1:
            worker = Path(tensorrt_llm.__file__).parent / "bin" / "executorWorker"
            parallel = trtllm.ParallelConfig(trtllm.CommunicationType.MPI, trtllm.CommunicationMode.ORCHESTRATOR,
                                             orchestrator_config=trtllm.OrchestratorConfig(True, str(worker)))
        kv = trtllm.KvCacheConfig(enable_block_reuse=True,
                                  free_gpu_memory_fraction=options.get("kv_cache_free_gpu_memory_fraction"))
        self.executor = trtllm.Executor(Path(engine_dir), trtllm.ModelType.DECODER_ONLY, trtllm.ExecutorConfig(
            max_beam_width=1, kv_cache_config=kv, max_batch_size=options.get("max_batch_size"),
            parallel_config=parallel))
        self._ids: dict[int, str] = {}    # request id → key
        self._keys: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._route, name="trtllm-responses", daemon=True)
        self._thread.start()

    def submit(self, key: str, ids: list[int], table, fields: dict, extra_ids: Optional[list[int]]) -> None:
        """Enqueue one request (fields: trtllm_backend.request_fields; table [rows, hidden] or None)."""
        t = self.trtllm
        tuning = None
        if table is not None:
            import torch

            tuning = t.PromptTuningConfig(table.to("cuda") if torch.cuda.is_available() else table, extra_ids)
        request = t.Request(list(ids), fields["max_tokens"], streaming=fields["streaming"],
                            sampling_config=t.SamplingConfig(1, **fields["sampling_config"]),
                            output_config=t.OutputConfig(**fields["output_config"]), end_id=fields["end_id"],
                            pad_id=fields["pad_id"], stop_words=fields["stop_words"], prompt_tuning_config=tuning)
        with self._lock:  # the router looks the id up under the same lock: it is known before any response
            rid = self.executor.enqueue_request(request)
            self._ids[rid], self._keys[key] = key, rid

    def cancel(self, key: str) -> None:
        with self._lock:
            rid = self._keys.get(key)
        if rid is not None:
            self.executor.cancel_request(rid)

    def stats(self) -> dict:
        """The latest iteration's figures (active, queued, scheduled requests, KV blocks as tokens)."""
        its = list(self.executor.get_latest_iteration_stats())
        if not its:
            return {}
        it = its[-1]
        kv, ifb = it.kv_cache_stats, it.inflight_batching_stats
        per_block = int(kv.tokens_per_block) if kv else 0
        return {"active_sequences": int(it.num_active_requests), "queued_requests": int(it.num_queued_requests),
                "steps": int(it.iter), "step_sequences": int(ifb.num_scheduled_requests) if ifb else 0,
                "kv_tokens_used": int(kv.used_num_blocks) * per_block if kv else 0,
                "kv_tokens_free": int(kv.free_num_blocks) * per_block if kv else 0}

    def _route(self) -> None:
        while not self._stop:
            try:
                responses = self.executor.await_responses(timeout=timedelta(milliseconds=AWAIT_MS))
            except Exception as exc:  # noqa: BLE001  the executor is gone: fail everything waiting
                with self._lock:
                    keys, self._ids, self._keys = list(self._keys), {}, {}
                for key in keys:
                    self.on_response(key, [], None, True, f"TensorRT-LLM executor failed: {exc}")
                return
            for resp in responses:
                with self._lock:
                    key = self._ids.get(resp.request_id)
                if key is None:
                    continue
                if resp.has_error():
                    final, error, tokens, logprobs = True, str(resp.error_msg), [], None
                else:
                    r = resp.result
                    final, error = bool(r.is_final), None
                    tokens = [int(x) for x in r.output_token_ids[0]]
                    logprobs = [float(x) for x in r.log_probs[0]] if r.log_probs else None
                if final:
                    with self._lock:
                        self._ids.pop(resp.request_id, None)
                        self._keys.pop(key, None)
                self.on_response(key, tokens, logprobs, final, error)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.executor.shutdown()


class WorkerClient:
    """ExecutorHost's interface in this process, answered by this file run under another interpreter.

    The worker's stderr (TensorRT-LLM's log) goes to this process's stderr.

    Args:
        python: the interpreter with tensorrt_llm (VIDEONEVA_TRTLLM_PYTHON).
        engine_dir, options, on_response: as for ExecutorHost.
    """

    def __init__(self, python: str, engine_dir, options: dict, on_response: OnResponse):
        from videoneva.runtime.tensorrt_backend import BackendUnavailable

        self.on_response = on_response
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), str(engine_dir), json.dumps(options)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        first = read_frame(self.proc.stdout)
        if first is None or "error" in first:
            self.close()
            why = first["error"] if first else f"it exited with status {self.proc.returncode}"
            raise BackendUnavailable(f"the TensorRT-LLM worker under {python} could not load {engine_dir}: {why}")
        self.info = first["info"]
        self._write = threading.Lock()
        self._stats: dict[str, tuple[threading.Event, dict]] = {}
        self._reader = threading.Thread(target=self._read, name="trtllm-worker-responses", daemon=True)
        self._reader.start()

    def _send(self, msg: dict) -> None:
        with self._write:
            write_frame(self.proc.stdin, msg)

    def submit(self, key: str, ids: list[int], table, fields: dict, extra_ids: Optional[list[int]]) -> None:
        self._send({"op": "submit", "key": key, "ids": [int(i) for i in ids], "table": pack_tensor(table),
                    "fields": fields, "extra_ids": extra_ids})

    def cancel(self, key: str) -> None:
        self._send({"op": "cancel", "key": key})

    def stats(self, timeout: float = 5.0) -> dict:
        key = os.urandom(8).hex()
        box = (threading.Event(), {})
        self._stats[key] = box
        self._send({"op": "stats", "key": key})
        box[0].wait(timeout)
        self._stats.pop(key, None)
        return box[1]

    def _read(self) -> None:
        while (msg := read_frame(self.proc.stdout)) is not None:
            if "stats" in msg:
                box = self._stats.get(msg["key"])
                if box is not None:
                    box[1].update(msg["stats"])
                    box[0].set()
                continue
            self.on_response(msg["key"], msg["tokens"], msg["logprobs"], msg["final"], msg["error"])
        self.on_response(None, [], None, True, f"the TensorRT-LLM worker exited (status {self.proc.poll()})")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the worker ends at the end of its input
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def serve(engine_dir: str, options: dict, inp: BinaryIO, out: BinaryIO) -> None:
    """The worker: an ExecutorHost whose requests come from inp and responses go to out."""
    lock = threading.Lock()

    def send(msg: dict) -> None:
        with lock:
            write_frame(out, msg)

    try:
        host = ExecutorHost(engine_dir, options, lambda key, tokens, logprobs, final, error: send(
            {"key": key, "tokens": tokens, "logprobs": logprobs, "final": final, "error": error}))
    except Exception as exc:  # noqa: BLE001  reported to the parent, which names this interpreter
        send({"error": f"{type(exc).__name__}: {exc}"})
        return
    send({"info": host.info})
    while (msg := read_frame(inp)) is not None:
        try:
            if msg["op"] == "submit":
                host.submit(msg["key"], msg["ids"], unpack_tensor(msg["table"]), msg["fields"], msg["extra_ids"])
            elif msg["op"] == "cancel":
                host.cancel(msg["key"])
            else:
                send({"key": msg["key"], "stats": host.stats()})
        except Exception as exc:  # noqa: BLE001  this request fails, the worker goes on
            send({"key": msg.get("key"), "tokens": [], "logprobs": None, "final": True,
                  "error": f"{type(exc).__name__}: {exc}"})
    host.close()


def main() -> None:
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # the frames' own channel
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())        # anything printed goes to stderr
    serve(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}, sys.stdin.buffer, frames)


if __name__ == "__main__":
    main()
