"""`videoneva serve engine_dir=DIR …`: render the model repository, run tritonserver, stop it cleanly."""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from videoneva.config import DataConfig, InferenceConfig, TrainerConfig, _help, _positive, config_help, load_config, to_dict
from videoneva.errors import ConfigError
from videoneva.serving.render import pbtxt_string, render_repository
from videoneva.serving.server import ServerNotReady, TritonServer, check_port_free

log = logging.getLogger(__name__)

HELP = """videoneva serve: serve a Video NeVA model over gRPC with Triton Inference Server.

  videoneva serve engine_dir=DIR [host=127.0.0.1 grpc_port=8001 http_port=8000 metrics_port=8002]
                  [openai_port=9000 api_key_env=VAR openai_allowed_hosts=[host,…]]

Renders a model repository from triton_repo/: `videoneva` (the entry point: decoupled, streams
text) over `feature_cache`, `preprocess`, `vision_encoder` (dynamic batching) and `llm` (batches
every request in flight, streams token ids); then starts `tritonserver` (one on PATH, else the
nvidia-pytriton wheel's), waits until ready, prints the endpoints, and stops on Ctrl-C / SIGTERM,
or with exit status 1 when a python-backend stub dies (readiness turns false first; see
docs/operations.md). Binds to 127.0.0.1 unless host= says otherwise. inference.* keys (NeMo's
names) set the sampling defaults a request does not set.
With openai_port=, an OpenAI-compatible API (/v1/chat/completions with video_url / image_url
parts, /v1/models, /health) runs over the same gRPC endpoint (docs/openai.md).
Clients: `videoneva infer server_url=HOST:PORT …` or videoneva.serving.Client."""


@dataclass
class ServeConfig:
    engine_dir: Optional[str] = _help("engine directory from `videoneva build`", default=None)
    host: str = _help("address for all endpoints; 0.0.0.0 exposes the server to the network", default="127.0.0.1")
    grpc_port: int = _help("gRPC port (0: pick a free one)", default=8001)
    http_port: int = _help("HTTP port (health, 0: pick a free one)", default=8000)
    metrics_port: int = _help("Prometheus metrics port (0: pick a free one)", default=8002)
    openai_port: int = _help("OpenAI-compatible HTTP API port (/v1/chat/completions; 0: pick a free one; -1: off)",
                             default=-1)
    openai_allowed_hosts: list = _help("hosts the OpenAI API may fetch http(s) media from (empty: remote URLs "
                                       "are refused)", default_factory=list)
    openai_fetch_timeout: float = _help("seconds for fetching one remote media item", default=10.0)
    openai_workers: int = _help("OpenAI API requests answered at once (the rest wait)", default=64)
    api_key_env: Optional[str] = _help("name of the environment variable holding the OpenAI API's key (unset: "
                                       "no key is asked for)", default=None)
    model_repository: Optional[str] = _help("where to render the model repository (default: a temp dir)", default=None)
    media_root: Optional[str] = _help("server-side media root for requests that send media_path (confined)", default=None)
    preprocess_instances: int = _help("instances of the preprocess model (media decode runs in parallel)", default=2)
    vision_instances: int = _help("instances of the vision encoder", default=1)
    vision_max_batch_frames: int = _help("frames per vision encoder batch (at least data.num_frames)", default=32)
    vision_queue_delay_us: int = _help("dynamic batching: how long the vision encoder waits to fill a batch (0: "
                                       "not at all; requests that arrive while it is busy are batched anyway)",
                                       default=0)
    llm_instances: int = _help("instances of the llm model (each loads the LLM weights and batches its own "
                               "requests; one instance batches best)", default=1)
    llm_max_batch_size: int = _help("most sequences the llm decodes at once (in-flight batching; the rest queue)",
                                    default=16)
    max_kv_tokens: Optional[int] = _help("CPU LLMs: most KV-cache positions of the llm's batch (null: "
                                         "llm_max_batch_size × the model's context)", default=None)
    prefix_cache_bytes: int = _help("CPU LLMs: bytes of prompt-prefix KV caches kept (up to and including the media "
                                    "rows, keyed by the media's content hash and the prefix's ids), so a later question "
                                    "about the same media prefills only what follows it; needs the feature cache "
                                    "(cache_bytes > 0), which gives the content hash (0: off)", default=2**30)
    kv_cache_free_gpu_memory_fraction: float = _help(
        "TensorRT-LLM: share of the GPU memory left free by the engine (and the vision plan, loaded first) that "
        "its paged KV cache takes; the rest stays for DALI and other processes", default=0.8)
    stream_interval_ms: float = _help("a streamed answer's pieces: the first token at once, then what was generated "
                                      "over each interval (0: a piece per token)", default=20.0)
    videoneva_instances: int = _help("instances of the videoneva entry model", default=2)
    videoneva_concurrency: int = _help("requests each videoneva instance answers at once (its threads); "
                                       "instances × concurrency requests are in flight, the rest queue", default=8)
    cache_bytes: int = _help("visual feature cache size in bytes (0 disables it)", default=256 * 2**20)
    max_tokens_limit: int = _help("the largest max_tokens a request may ask for (a cap, not a default: "
                                  "inference.tokens_to_generate is the default)", default=1024)
    max_media_bytes: int = _help("largest media_bytes_input accepted", default=64 * 2**20)
    max_num_frames: Optional[int] = _help("the most frames a request may ask for with num_frames (default: "
                                          "vision_max_batch_frames)", default=None)
    threads: int = _help("intra-op threads per llm instance, torch and ONNX Runtime (0: their default)", default=0)
    vision_threads: int = _help("ONNX Runtime intra-op threads per vision_encoder instance (0: one per core)", default=0)
    model_id: Optional[str] = _help("model id reported in answers (default: the model's own)", default=None)
    device: str = _help("cpu | cuda | auto", default="auto")
    startup_timeout: float = _help("seconds to wait for the server to become ready", default=300.0)
    stall_timeout: float = _help("seconds without progress while not ready (the server and its python stubs use "
                                 "under 2% of a core and the log does not grow), after which a start counts as "
                                 "stalled and is retried (0: only startup_timeout)",
                                 default=60.0)
    startup_retries: int = _help("restarts when the server is not ready in time (a python-backend model "
                                 "load can stall under heavy CPU load) or is killed by a signal while "
                                 "starting; 0 disables", default=1)
    log_verbose: int = _help("tritonserver --log-verbose level", default=0)
    model_load_threads: int = _help("tritonserver --model-load-thread-count: models loaded at once (loading the "
                                    "python models in parallel stalled some starts on CPU)", default=1)
    tritonserver_args: Optional[str] = _help("more tritonserver flags, one string (e.g. \"--grpc-use-ssl=true "
                                             "--grpc-server-cert=/certs/s.crt --grpc-server-key=/certs/s.key\")",
                                             default=None)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        if not self.engine_dir:
            raise ConfigError("engine_dir=DIR is required (build one with `videoneva build checkpoint=CKPT output=DIR`)")
        for key in ("grpc_port", "http_port", "metrics_port"):
            v = getattr(self, key)
            if not isinstance(v, int) or not 0 <= v <= 65535:
                raise ConfigError(f"{key} must be a port number in 0..65535, got {v!r}")
        if not isinstance(self.openai_port, int) or not -1 <= self.openai_port <= 65535:
            raise ConfigError(f"openai_port must be a port number in 0..65535 or -1 (off), got {self.openai_port!r}")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ConfigError(f"api_key_env={self.api_key_env}: that environment variable is not set or empty")
        if not self.openai_fetch_timeout > 0:
            raise ConfigError(f"openai_fetch_timeout must be > 0, got {self.openai_fetch_timeout!r}")
        for key in ("preprocess_instances", "vision_instances", "vision_max_batch_frames", "llm_instances",
                    "llm_max_batch_size", "videoneva_instances", "videoneva_concurrency", "model_load_threads",
                    "openai_workers"):
            _positive(key, getattr(self, key))
        if isinstance(self.startup_retries, bool) or not isinstance(self.startup_retries, int) or self.startup_retries < 0:
            raise ConfigError(f"startup_retries must be a whole number >= 0, got {self.startup_retries!r}")
        _positive("max_tokens_limit", self.max_tokens_limit)
        _positive("max_media_bytes", self.max_media_bytes)
        if self.max_num_frames is not None:
            _positive("max_num_frames", self.max_num_frames)
            if self.max_num_frames > self.vision_max_batch_frames:
                raise ConfigError(f"max_num_frames={self.max_num_frames} exceeds vision_max_batch_frames="
                                  f"{self.vision_max_batch_frames}, the most frames one vision batch holds; raise "
                                  "vision_max_batch_frames or lower max_num_frames")
        if self.inference.tokens_to_generate > self.max_tokens_limit:
            raise ConfigError(f"inference.tokens_to_generate={self.inference.tokens_to_generate} (the default) exceeds "
                              f"max_tokens_limit={self.max_tokens_limit}")
        if self.inference.media_base_path:
            raise ConfigError("inference.media_base_path is infer's media root; `serve` takes media_root=DIR")
        if self.max_kv_tokens is not None:
            _positive("max_kv_tokens", self.max_kv_tokens)
        if not 0 < self.kv_cache_free_gpu_memory_fraction <= 1:
            raise ConfigError(f"kv_cache_free_gpu_memory_fraction must be in (0, 1], got "
                              f"{self.kv_cache_free_gpu_memory_fraction!r}")
        if min(self.cache_bytes, self.prefix_cache_bytes, self.threads, self.vision_threads, self.vision_queue_delay_us,
               self.stream_interval_ms) < 0:
            raise ConfigError("cache_bytes, prefix_cache_bytes, threads, vision_threads, vision_queue_delay_us and "
                              "stream_interval_ms must be >= 0")
        if not self.startup_timeout > 0 or self.stall_timeout < 0:
            raise ConfigError(f"startup_timeout must be > 0 and stall_timeout >= 0, got {self.startup_timeout!r} "
                              f"and {self.stall_timeout!r}")


def infer_config(cfg: ServeConfig) -> dict:
    """The InferConfig the entry model builds its request flow from (as plain data)."""
    inference = {**to_dict(cfg.inference), "media_base_path": str(Path(cfg.media_root).resolve()) if cfg.media_root else None}
    return {"engine_dir": str(Path(cfg.engine_dir).resolve()), "device": cfg.device, "model_id": cfg.model_id,
            "trainer": to_dict(cfg.trainer), "inference": inference,
            "data": {k: v for k, v in to_dict(cfg.data).items() if v is not None}}


def check_model_source(cfg: ServeConfig):
    """Fail before starting anything when the engine dir or media root is unusable; returns the EngineDir."""
    from videoneva.runtime.engine_dir import EngineDir

    eng = EngineDir.read(cfg.engine_dir)  # lists what is missing
    if cfg.media_root and not Path(cfg.media_root).is_dir():
        raise ConfigError(f"media_root {cfg.media_root} is not a directory")
    ms = eng.media_settings(cfg.data)
    frames = 1 if ms.splice_single_frame else ms.num_frames
    if frames != -1 and cfg.vision_max_batch_frames < frames:
        raise ConfigError(f"vision_max_batch_frames={cfg.vision_max_batch_frames} is below the {frames} frames "
                          "of one video; raise it")
    _, llm = eng.backends(cfg.device)
    trt = eng.path / "llm" / "trtllm_engine"
    if llm == "tensorrt_llm" and (trt / "config.json").is_file():
        from videoneva.runtime.trtllm_backend import engine_world_size

        world = engine_world_size(trt)
        if world > 1 and cfg.llm_instances > 1:
            raise ConfigError(f"llm_instances={cfg.llm_instances} with a TensorRT-LLM engine of {world} ranks (tensor × "
                              "pipeline parallel): each instance would start its own ranks on the same GPUs; serve "
                              "it with llm_instances=1 (its executor batches every request in flight)")
    return eng


def render(cfg: ServeConfig, out_dir: str | Path) -> Path:
    """Render the model repository for cfg into out_dir (paths made absolute for the server)."""
    engine = str(Path(cfg.engine_dir).resolve())
    backend = {"engine_dir": pbtxt_string(engine), "device": cfg.device}
    models = {
        "videoneva": {"infer_config": pbtxt_string(json.dumps(infer_config(cfg))),
                      "max_tokens_limit": cfg.max_tokens_limit, "max_media_bytes": cfg.max_media_bytes,
                      "max_num_frames": cfg.max_num_frames or cfg.vision_max_batch_frames,
                      "cache_bytes": cfg.cache_bytes, "videoneva_instances": cfg.videoneva_instances,
                      "videoneva_concurrency": cfg.videoneva_concurrency},
        "feature_cache": {"cache_bytes": cfg.cache_bytes},
        "preprocess": {"media_root": pbtxt_string(Path(cfg.media_root).resolve() if cfg.media_root else ""),
                       "preprocess_instances": cfg.preprocess_instances},
        "vision_encoder": {**backend, "threads": cfg.vision_threads, "vision_instances": cfg.vision_instances,
                           "vision_max_batch_frames": cfg.vision_max_batch_frames,
                           "vision_queue_delay_us": cfg.vision_queue_delay_us},
        "llm": {**backend, "threads": cfg.threads, "precision": cfg.trainer.precision, "llm_instances": cfg.llm_instances,
                "llm_max_batch_size": cfg.llm_max_batch_size, "max_kv_tokens": cfg.max_kv_tokens or "",
                "prefix_cache_bytes": cfg.prefix_cache_bytes,
                "stream_interval_ms": cfg.stream_interval_ms,
                "kv_cache_free_gpu_memory_fraction": cfg.kv_cache_free_gpu_memory_fraction},
    }
    return render_repository(out_dir, models)


def openai_settings(cfg: ServeConfig, grpc_url: str):
    """The OpenAI frontend's settings for a server started from cfg."""
    from videoneva.runtime.engine_dir import EngineDir
    from videoneva.serving.openai_api import OpenAISettings
    from videoneva.serving.openai_media import MediaPolicy

    media = MediaPolicy(cfg.media_root, frozenset(cfg.openai_allowed_hosts), cfg.max_media_bytes,
                        cfg.openai_fetch_timeout)
    return OpenAISettings(grpc_url, cfg.model_id or EngineDir.read(cfg.engine_dir).settings.model_id, media,
                          os.environ[cfg.api_key_env] if cfg.api_key_env else None, workers=cfg.openai_workers)


def start_server(cfg: ServeConfig, workdir: str | Path) -> TritonServer:
    """Check inputs, render under workdir (unless cfg.model_repository), start and wait until ready."""
    check_model_source(cfg)
    repo = Path(cfg.model_repository) if cfg.model_repository else Path(workdir) / "model_repository"
    render(cfg, repo)
    for attempt in range(cfg.startup_retries + 1):
        server = TritonServer(repo, host=cfg.host, grpc_port=cfg.grpc_port, http_port=cfg.http_port,
                              metrics_port=cfg.metrics_port, log_verbose=cfg.log_verbose, model_load_threads=cfg.model_load_threads,
                              log_file=Path(workdir) / "tritonserver.log", stall_timeout=cfg.stall_timeout,
                              extra_args=shlex.split(cfg.tritonserver_args or ""))
        try:
            return server.start(cfg.startup_timeout)
        except ServerNotReady as exc:
            if attempt == cfg.startup_retries:
                raise
            log.warning("%s; restarting (%d of %d)", str(exc).splitlines()[0], attempt + 1, cfg.startup_retries)
    raise AssertionError("unreachable")


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(HELP + "\n\n" + config_help(ServeConfig, "Configuration"))
        return 0
    cfg: ServeConfig = load_config(ServeConfig, argv)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("host=%s: the server is reachable from other machines; it has no authentication", cfg.host)
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with tempfile.TemporaryDirectory(prefix="videoneva-serve-") as work:
            if cfg.openai_port > 0:  # named before the slow start
                check_port_free(cfg.host, cfg.openai_port, "openai_port")
            server = start_server(cfg, work)
            api = None
            try:
                if cfg.openai_port != -1:
                    from videoneva.serving.openai_api import OpenAIServer

                    api = OpenAIServer(openai_settings(cfg, server.grpc_url), cfg.host, cfg.openai_port).start()
                openai = f"  openai={api.url}/v1" if api else ""
                print(f"videoneva serve: ready  grpc={server.grpc_url}  http=http://{server.host}:{server.http_port}  "
                      f"metrics={server.metrics_url}{openai}  (log: {server.log_file}; Ctrl-C stops)", flush=True)
                failed = server.supervise(stop)  # until Ctrl-C / SIGTERM, the server exits or a stub dies
                if failed:
                    print(f"videoneva serve: {failed}; last log lines:\n{server.log_tail()}", file=sys.stderr)
                    return 1
                print("videoneva serve: stopping", file=sys.stderr, flush=True)
            finally:
                if api is not None:
                    api.stop()
                server.stop()
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
