"""Job configuration: dataclasses with the seed's key names, loaded from YAML + key=value overrides.

The keys mirror NeMo's `neva_inference.yaml` / `neva_evaluation.py` command line so the seed's
commands work unchanged (`inference.temperature=0.2 trainer.precision=bf16 …`). OmegaConf merges
the YAML defaults with the dotlist; unknown keys and bad values raise ConfigError naming the key
and the valid choices. Field docstrings (the `help` metadata) are printed by `--help`.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from videoneva.errors import ConfigError

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).parent / "conf"
PRECISIONS = ("32", "16", "bf16")
MEDIA_TYPES = ("image", "video")
SPLICE_CHOICES = (None, "first", "middle", "last")
INSERT_CHOICES = (None, "left", "right")
ASPECT_CHOICES = ("square", "pad", "keep")
POOL_CHOICES = (1, 2, 4)
QUANT_ALGOS = ("awq", "fp8", "int8_sq")


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


def _choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {list(choices)}")


def _positive(key: str, value: int, allow: tuple = ()) -> None:
    if value in allow:
        return
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def normalize_precision(value: Any) -> str:
    """Map Lightning-style precisions (32, '16-mixed', 'bf16-mixed', …) to '32' | '16' | 'bf16'."""
    text = str(value).lower().replace("-mixed", "").replace("-true", "")
    text = {"32": "32", "fp32": "32", "16": "16", "fp16": "16", "bf16": "bf16"}.get(text, text)
    _choice("trainer.precision", text, PRECISIONS)
    return text


@dataclass
class TrainerConfig:
    precision: Any = _help("32 | 16 | bf16 (Lightning forms like bf16-mixed accepted)", default="32")
    devices: int = _help("devices for the job (the torch backend runs on one)", default=1)
    num_nodes: int = _help("nodes (one supported in-process)", default=1)
    accelerator: str = _help("auto | cpu | gpu", default="auto")

    def __post_init__(self) -> None:
        self.precision = normalize_precision(self.precision)
        _choice("trainer.accelerator", self.accelerator, ("auto", "cpu", "gpu", "cuda"))
        _positive("trainer.devices", self.devices)
        _positive("trainer.num_nodes", self.num_nodes)


@dataclass
class InferenceConfig:
    media_base_path: Optional[str] = _help("folder or .tar holding the prompt file's media", default=None)
    media_type: str = _help("image | video: the media key read from each prompt line", default="image")
    temperature: float = _help("sampling temperature", default=0.2)
    top_k: int = _help("top-k sampling; 0 disables", default=0)
    top_p: float = _help("nucleus sampling; 1.0 disables", default=0.9)
    greedy: bool = _help("greedy decoding (ignores temperature/top_k/top_p)", default=False)
    add_BOS: bool = _help("prepend the tokenizer's BOS token", default=False)
    all_probs: bool = _help("write per-token log-probabilities of the generated tokens", default=False)
    compute_logprob: bool = _help("alias of all_probs kept for NeMo configs", default=False)
    repetition_penalty: float = _help("repetition penalty (1.0 disables)", default=1.2)
    insert_media_token: Optional[str] = _help(
        "left | right: where the media token goes relative to the text; null: text used as given",
        default=None)
    tokens_to_generate: int = _help("maximum new tokens", default=256)
    min_tokens_to_generate: int = _help("minimum new tokens before a stop may end generation", default=0)
    end_strings: list = _help(
        "strings that end generation (the template's own are always added)",
        default_factory=lambda: ["<extra_id_1>", "<extra_id_7>"])
    batch_size: int = _help("prompts per forward pass (1 in-process; the server batches)", default=1)
    seed: int = _help("random seed; each prompt line samples with seed + line index", default=1234)

    def __post_init__(self) -> None:
        _choice("inference.media_type", self.media_type, MEDIA_TYPES)
        _choice("inference.insert_media_token", self.insert_media_token, INSERT_CHOICES)
        if self.temperature <= 0 and not self.greedy:
            raise ConfigError(f"inference.temperature must be > 0 when sampling, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"inference.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"inference.top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"inference.repetition_penalty must be > 0, got {self.repetition_penalty}")
        _positive("inference.tokens_to_generate", self.tokens_to_generate)
        if not 0 <= self.min_tokens_to_generate <= self.tokens_to_generate:
            raise ConfigError(
                "inference.min_tokens_to_generate must be in [0, inference.tokens_to_generate="
                f"{self.tokens_to_generate}], got {self.min_tokens_to_generate}")
        _positive("inference.batch_size", self.batch_size)
        self.end_strings = [str(s) for s in self.end_strings]


@dataclass
class QuantizationConfig:
    algorithm: str = _help("awq (W4A16) | fp8 (Hopper or newer GPUs), through nvidia-modelopt; the build refuses int8_sq",
                          default="awq")
    enable: bool = _help("quantize the LLM when building an engine", default=False)
    num_samples: int = _help("calibration samples", default=100)
    group_size: int = _help("AWQ group (block) size", default=128)

    def __post_init__(self) -> None:
        _choice("quantization.algorithm", self.algorithm, QUANT_ALGOS)
        _positive("quantization.num_samples", self.num_samples)
        _positive("quantization.group_size", self.group_size)


@dataclass
class DataConfig:
    """Media settings; null means 'take the checkpoint's own value'."""

    media_type: Optional[str] = _help("image | video", default=None)
    splice_single_frame: Optional[str] = _help("first | middle | last: use one frame of the video", default=None)
    num_frames: Optional[int] = _help("frames sampled uniformly per video; -1 = all frames", default=None)
    image_token_len: Optional[int] = _help(
        "tokens per frame; derived from image and patch size, an explicit value must agree", default=None)
    image_folder: Optional[str] = _help("media root for images (training data)", default=None)
    video_folder: Optional[str] = _help("media root for videos: a folder or a .tar", default=None)
    image_aspect_ratio: Optional[str] = _help("square | pad | keep", default=None)
    frame_token_pool: Optional[int] = _help("1 | 2 | 4: average-pool each frame's token grid", default=None)
    conv_template: Optional[str] = _help("conversation template (nvgpt, nv_steerlm, llama_2, …)", default=None)
    decoder: Optional[str] = _help("auto | decord | dali", default=None)

    def __post_init__(self) -> None:
        if self.media_type is not None:
            _choice("data.media_type", self.media_type, MEDIA_TYPES)
        _choice("data.splice_single_frame", self.splice_single_frame, SPLICE_CHOICES)
        if self.num_frames is not None:
            _positive("data.num_frames", self.num_frames, allow=(-1,))
        if self.image_token_len is not None:
            _positive("data.image_token_len", self.image_token_len)
        if self.image_aspect_ratio is not None:
            _choice("data.image_aspect_ratio", self.image_aspect_ratio, ASPECT_CHOICES)
        if self.frame_token_pool is not None:
            _choice("data.frame_token_pool", self.frame_token_pool, POOL_CHOICES)
        if self.decoder is not None:
            _choice("data.decoder", self.decoder, ("auto", "decord", "dali"))


@dataclass
class InferConfig:
    """`videoneva infer`: the seed's neva_evaluation.py job."""

    neva_model_file: Optional[str] = _help(
        "checkpoint: native dir, transformers Llava dir, or NeMo .nemo (finetuned, or projector-only "
        "with base_model_file)", default=None)
    base_model_file: Optional[str] = _help("NeMo GPT .nemo holding the LLM when neva_model_file has only the projector", default=None)
    vision_tower: Optional[str] = _help("local HF CLIP dir when a .nemo does not carry the vision tower", default=None)
    engine_dir: Optional[str] = _help("engine directory from `videoneva build` (instead of a checkpoint)", default=None)
    prompt_file: Optional[str] = _help("jsonl: {video|image, text, category, question_id} per line", default=None)
    output_file: Optional[str] = _help("jsonl written one line per prompt line as each completes", default=None)
    resume: bool = _help("skip question_ids already answered in output_file", default=False)
    overwrite: bool = _help("replace an existing output_file instead of refusing", default=False)
    print_answers: bool = _help("print each answer in the seed's form on stdout", default=True)
    model_id: Optional[str] = _help("model id written to each output line (default: checkpoint name)", default=None)
    device: str = _help("cpu | cuda | auto", default="auto")
    tensor_model_parallel_size: int = _help("TP size (engine builds; the torch backend runs on one device)", default=1)
    pipeline_model_parallel_size: int = _help("PP size (engine builds; the torch backend runs on one device)", default=1)
    megatron_amp_O2: bool = _help("accepted for NeMo configs; no effect", default=False)
    server_url: Optional[str] = _help("HOST:PORT of a `videoneva serve` gRPC endpoint: ask it instead of loading a model", default=None)
    concurrency: int = _help("lines answered at once (in-process: the LLM batches them in flight; with server_url: "
                             "requests in flight)", default=1)
    llm_max_batch_size: int = _help("in-process, concurrency > 1: most sequences the LLM decodes at once", default=16)
    max_kv_tokens: Optional[int] = _help("in-process CPU LLMs, concurrency > 1: most KV-cache positions of the batch "
                                         "(null: llm_max_batch_size × the model's context)", default=None)
    prefix_cache_bytes: int = _help("in-process CPU LLMs, concurrency > 1: bytes of prompt-prefix KV caches kept (up "
                                    "to and including the media rows), reused by later lines about the same media; "
                                    "needs cache_bytes > 0 (0: off)", default=2**30)
    stream: bool = _help("with server_url: stream tokens (answers printed as they arrive when concurrency=1)", default=False)
    request_timeout: float = _help("with server_url: seconds one attempt of a request may take", default=300.0)
    retries: int = _help("with server_url: further attempts after a transient failure (backoff doubles from 0.5 s)", default=3)
    server_media: str = _help("with server_url: send media as `bytes` (read here, under media_base_path) or as a "
                              "`path` under the server's media_root", default="bytes")
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        _positive("tensor_model_parallel_size", self.tensor_model_parallel_size)
        _positive("pipeline_model_parallel_size", self.pipeline_model_parallel_size)
        _positive("concurrency", self.concurrency)
        _positive("llm_max_batch_size", self.llm_max_batch_size)
        if self.max_kv_tokens is not None:
            _positive("max_kv_tokens", self.max_kv_tokens)
        if self.prefix_cache_bytes < 0:
            raise ConfigError(f"prefix_cache_bytes must be >= 0, got {self.prefix_cache_bytes!r}")
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _choice("server_media", self.server_media, ("bytes", "path"))
        if self.retries < 0 or self.request_timeout <= 0:
            raise ConfigError("retries must be >= 0 and request_timeout > 0")


def _flat_keys(schema: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
            keys += _flat_keys(f.type, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _resolve_types(schema: type) -> type:
    import typing

    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        f.type = hints[f.name]
    return schema


def load_config(schema: type, overrides: list[str], yaml_path: str | Path | None = None) -> Any:
    """Build a validated `schema` instance from YAML defaults and `key=value` overrides.

    Args:
        schema: a config dataclass (e.g. InferConfig).
        overrides: dotlist items like ["inference.temperature=0.2", "trainer.precision=bf16"];
            a leading `+` or `--` on a key is accepted (Hydra habits).
        yaml_path: optional YAML with defaults; `config=PATH` in overrides also selects one.
    """
    _resolve_types(schema)
    for sub in dataclasses.fields(schema):
        if isinstance(sub.type, type) and dataclasses.is_dataclass(sub.type):
            _resolve_types(sub.type)
    items = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r} (see --help for the keys)")
        key, value = item.split("=", 1)
        key = key.lstrip("+").lstrip("-")
        if key in ("config", "config_file", "config-name", "config_name"):
            yaml_path = value
            continue
        items.append(f"{key}={value}")
    base = OmegaConf.structured(schema)
    try:
        layers = [base]
        if yaml_path is not None:
            if not Path(yaml_path).is_file():
                raise ConfigError(f"config file not found: {yaml_path}")
            layers.append(OmegaConf.load(yaml_path))
        layers.append(OmegaConf.from_dotlist(items))
        merged: DictConfig = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        valid = ", ".join(_flat_keys(schema))
        if "Key" in type(exc).__name__ or "not in struct" in str(exc):
            raise ConfigError(f"unknown config key {key!r}; valid keys: {valid}") from None
        raise ConfigError(f"bad value for {key!r}: {str(exc).splitlines()[0]}") from None
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def load_config_dict(schema: type, data: dict) -> Any:
    """A validated `schema` instance from plain data (e.g. `to_dict` of one, as JSON)."""
    _resolve_types(schema)
    for sub in dataclasses.fields(schema):
        if isinstance(sub.type, type) and dataclasses.is_dataclass(sub.type):
            _resolve_types(sub.type)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(data)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad configuration: {str(exc).splitlines()[0]}") from None


def config_help(schema: type, title: str) -> str:
    """Render `--help` text from the dataclass fields (keys, defaults of a default instance, help)."""
    lines = [title, "", "keys (key=value; defaults in brackets):"]

    def walk(cls: type, defaults: Any, prefix: str) -> None:
        _resolve_types(cls)
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            if dataclasses.is_dataclass(value):
                walk(type(value), value, f"{prefix}{f.name}.")
                continue
            lines.append(f"  {prefix}{f.name} [{value}]  {f.metadata.get('help', '')}".rstrip())

    _resolve_types(schema)
    instance = schema.__new__(schema)  # defaults without __post_init__ (required keys may be unset)
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            setattr(instance, f.name, f.default)
        else:
            setattr(instance, f.name, f.default_factory())  # type: ignore[misc]
    walk(schema, instance, "")
    return "\n".join(lines)


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain data (embedded in every artifact and result file)."""
    return dataclasses.asdict(cfg)
