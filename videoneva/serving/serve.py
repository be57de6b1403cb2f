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

from videoneva.config import DataConfig, TrainerConfig, _help, _positive, config_help, load_config
from videoneva.errors import CheckpointError, ConfigError
from videoneva.serving.render import pbtxt_string, render_repository
from videoneva.serving.server import ServerNotReady, TritonServer, stub_python_path

log = logging.getLogger(__name__)

HELP = """videoneva serve: serve a Video NeVA model over gRPC with Triton Inference Server.

  videoneva serve engine_dir=DIR [host=127.0.0.1 grpc_port=8001 http_port=8000 metrics_port=8002]

Renders a model repository from triton_repo/: `videoneva` (the entry point: BLS, decoupled,
streams text) over `feature_cache`, `preprocess`, `vision_encoder` (dynamic batching), `llm`
(streams token ids) and `postprocess`; then
starts `tritonserver` (one on PATH, else the nvidia-pytriton wheel's), waits until ready, prints
the endpoint, and stops on Ctrl-C / SIGTERM, or with exit status 1 when a python-backend stub dies
(readiness turns false first; see docs/operations.md). Binds to 127.0.0.1 unless host= says otherwise.
Clients: `videoneva infer server_url=HOST:PORT …` or videoneva.serving.Client."""


@dataclass
class ServeConfig:
    engine_dir: Optional[str] = _help("engine directory from `videoneva build`", default=None)
    host: str = _help("address for all endpoints; 0.0.0.0 exposes the server to the network", default="127.0.0.1")
    grpc_port: int = _help("gRPC port (0: pick a free one)", default=8001)
    http_port: int = _help("HTTP port (health, 0: pick a free one)", default=8000)
    metrics_port: int = _help("Prometheus metrics port (0: pick a free one)", default=8002)
    model_repository: Optional[str] = _help("where to render the model repository (default: a temp dir)", default=None)
    media_root: Optional[str] = _help("server-side media root for requests that send media_path (confined)", default=None)
    preprocess_instances: int = _help("instances of the preprocess model (media decode runs in parallel)", default=2)
    vision_instances: int = _help("instances of the vision encoder", default=1)
    vision_max_batch_frames: int = _help("frames per vision encoder batch (at least data.num_frames)", default=32)
    vision_queue_delay_us: int = _help("dynamic batching: how long the vision encoder waits to fill a batch", default=2000)
    llm_instances: int = _help("instances of the llm model (each loads the LLM weights)", default=1)
    postprocess_instances: int = _help("instances of the postprocess model", default=1)
    videoneva_instances: int = _help("instances of the videoneva entry model: requests answered at once (the rest queue)", default=4)
    cache_bytes: int = _help("visual feature cache size in bytes (0 disables it)", default=256 * 2**20)
    max_tokens: int = _help("largest max_tokens a request may ask for", default=1024)
    max_media_bytes: int = _help("largest media_bytes_input accepted", default=64 * 2**20)
    torch_threads: int = _help("torch threads per model instance (0: torch's default)", default=0)
    model_id: Optional[str] = _help("model id reported in answers (default: the model's own)", default=None)
    insert_media_token: Optional[str] = _help("left | right | null: where <video>/<image> goes when a question has "
                                              "none (a request's insert_media_token wins)", default=None)
    device: str = _help("cpu | cuda | auto", default="auto")
    startup_timeout: float = _help("seconds to wait for the server to become ready", default=300.0)
    stall_timeout: float = _help("seconds without progress while not ready (the server and its python stubs use "
                                 "under 2% of a core and the log does not grow), after which a start counts as "
                                 "stalled and is retried (0: only startup_timeout)",
                                 default=60.0)
    startup_retries: int = _help("restarts when the server is not ready in time (a python-backend model "
                                 "load can stall under heavy CPU load); 0 disables", default=1)
    log_verbose: int = _help("tritonserver --log-verbose level", default=0)
    model_load_threads: int = _help("tritonserver --model-load-thread-count: models loaded at once (loading the "
                                    "python models in parallel stalled some starts on CPU)", default=1)
    tritonserver_args: Optional[str] = _help("more tritonserver flags, one string (e.g. \"--grpc-use-ssl=true "
                                             "--grpc-server-cert=/certs/s.crt --grpc-server-key=/certs/s.key\")",
                                             default=None)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if not self.engine_dir:
            raise ConfigError("engine_dir=DIR is required (build one with `videoneva build checkpoint=CKPT output=DIR`)")
        for key in ("grpc_port", "http_port", "metrics_port"):
            v = getattr(self, key)
            if not isinstance(v, int) or not 0 <= v <= 65535:
                raise ConfigError(f"{key} must be a port number in 0..65535, got {v!r}")
        for key in ("preprocess_instances", "vision_instances", "vision_max_batch_frames", "llm_instances",
                    "postprocess_instances", "videoneva_instances", "model_load_threads"):
            _positive(key, getattr(self, key))
        if isinstance(self.startup_retries, bool) or not isinstance(self.startup_retries, int) or self.startup_retries < 0:
            raise ConfigError(f"startup_retries must be a whole number >= 0, got {self.startup_retries!r}")
        _positive("max_tokens", self.max_tokens)
        _positive("max_media_bytes", self.max_media_bytes)
        if self.insert_media_token not in (None, "left", "right"):
            raise ConfigError(f"insert_media_token={self.insert_media_token!r}: choose left, right or null")
        if self.cache_bytes < 0 or self.torch_threads < 0 or self.vision_queue_delay_us < 0:
            raise ConfigError("cache_bytes, torch_threads and vision_queue_delay_us must be >= 0")
        if not self.startup_timeout > 0 or self.stall_timeout < 0:
            raise ConfigError(f"startup_timeout must be > 0 and stall_timeout >= 0, got {self.startup_timeout!r} "
                              f"and {self.stall_timeout!r}")


def pipeline_args(cfg: ServeConfig) -> list[str]:
    """The InferConfig overrides the model builds its Pipeline from."""
    args = [f"engine_dir={Path(cfg.engine_dir).resolve()}", f"device={cfg.device}",
            f"trainer.precision={cfg.trainer.precision}"]
    if cfg.media_root:
        args.append(f"inference.media_base_path={Path(cfg.media_root).resolve()}")
    if cfg.model_id:
        args.append(f"model_id={cfg.model_id}")
    if cfg.insert_media_token:
        args.append(f"inference.insert_media_token={cfg.insert_media_token}")
    for key, value in cfg.data.__dict__.items():
        if value is not None:
            args.append(f"data.{key}={value}")
    return args


def check_model_source(cfg: ServeConfig) -> dict:
    """Fail before starting anything when the engine dir or media root is unusable; returns media.json."""
    from videoneva.runtime.engine import read_engine_dir

    _, media = read_engine_dir(cfg.engine_dir)  # lists what is missing
    if cfg.media_root and not Path(cfg.media_root).is_dir():
        raise ConfigError(f"media_root {cfg.media_root} is not a directory")
    frames = cfg.data.num_frames or media["settings"].get("num_frames") or 1
    if cfg.vision_max_batch_frames < frames:
        raise ConfigError(f"vision_max_batch_frames={cfg.vision_max_batch_frames} is below the {frames} frames "
                          "of one video; raise it")
    return media


def render(cfg: ServeConfig, out_dir: str | Path) -> Path:
    """Render the model repository for cfg into out_dir (paths made absolute for the server)."""
    args = pbtxt_string(json.dumps(pipeline_args(cfg)))
    common = {"pipeline_args": args, "python_path": pbtxt_string(json.dumps(stub_python_path()))}
    threads = {"torch_threads": cfg.torch_threads}
    models = {
        "videoneva": {**common, "max_tokens": cfg.max_tokens, "max_media_bytes": cfg.max_media_bytes,
                      "cache_bytes": cfg.cache_bytes, "videoneva_instances": cfg.videoneva_instances},
        "feature_cache": {"python_path": common["python_path"], "cache_bytes": cfg.cache_bytes},
        "preprocess": {**common, **threads, "preprocess_instances": cfg.preprocess_instances},
        "vision_encoder": {**common, **threads, "vision_instances": cfg.vision_instances,
                           "vision_max_batch_frames": cfg.vision_max_batch_frames,
                           "vision_queue_delay_us": cfg.vision_queue_delay_us},
        "llm": {**common, **threads, "llm_instances": cfg.llm_instances},
        "postprocess": {**common, "postprocess_instances": cfg.postprocess_instances},
    }
    return render_repository(out_dir, models)


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
            server = start_server(cfg, work)
            try:
                print(f"videoneva serve: ready  grpc={server.grpc_url}  http=http://{server.host}:{server.http_port}  "
                      f"metrics={server.metrics_url}  (log: {server.log_file}; Ctrl-C stops)", flush=True)
                failed = server.supervise(stop)  # until Ctrl-C / SIGTERM, the server exits or a stub dies
                if failed:
                    print(f"videoneva serve: {failed}; last log lines:\n{server.log_tail()}", file=sys.stderr)
                    return 1
                print("videoneva serve: stopping", file=sys.stderr, flush=True)
            finally:
                server.stop()
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
