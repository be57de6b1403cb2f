"""Read a NeMo `.nemo` (tar, gzipped tar or extracted folder): config, artifacts, and weights with
tensor-parallel (mp_rank_XX), pipeline-parallel (tp_rank_XX_pp_rank_YYY) and distributed-checkpoint
(`model_weights/`, torch_dist or zarr: nemo_dist.py) shards merged.

Weights come back under mcore names without the `model.` prefix (legacy NeMo GPT names renamed). The
archive layout is NVIDIA/NeMo nemo/collections/nlp/parts/nlp_overrides.py (NLPSaveRestoreConnector.save_to:
tar "w:" of a folder with arcname "."); the shard layout examples/nlp/language_modeling/
megatron_change_num_partitions.py (column-parallel on dim 0, row-parallel on dim 1, a fused GLU as
[gate_r; up_r] per rank).
"""
from __future__ import annotations

import io
import re
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from videoneva.checkpoint import nemo_keys as K
from videoneva.checkpoint.nemo_dist import read_distributed
from videoneva.errors import CheckpointError

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"
LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_MP_RE = re.compile(r"^mp_rank_(\d+)/model_weights\.ckpt$")
_TP_PP_RE = re.compile(r"^tp_rank_(\d+)_pp_rank_(\d+)/model_weights\.ckpt$")


def cfg_get(cfg: Any, path: str, default: Any = None) -> Any:
    """cfg["a"]["b"] for path "a.b"; None, a missing key or an unresolved `${…}` give default."""
    node = cfg
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    if node is None or (isinstance(node, str) and node.startswith("${")):
        return default
    return node


class NemoArchive:
    """A `.nemo` tar (plain or gzipped) or an extracted folder; member names without a leading `./`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"NeMo checkpoint not found: {self.path}")
        self.tar: Optional[tarfile.TarFile] = None
        self.compressed = False
        if self.path.is_dir():
            self.members = {p.relative_to(self.path).as_posix(): p for p in self.path.rglob("*") if p.is_file()}
        else:
            try:
                self.tar = tarfile.open(self.path, "r:*")
            except (tarfile.TarError, OSError) as exc:
                raise CheckpointError(f"{self.path}: not a .nemo archive (a tar file): {exc}") from None
            # Members of a plain tar are read in place; a compressed one has no cheap random access.
            self.compressed = not isinstance(self.tar.fileobj, io.BufferedReader)
            self.members = {}
            for m in self.tar.getmembers():
                name = m.name[2:] if m.name.startswith("./") else m.name
                if m.isfile():
                    self.members[name] = m

    def __enter__(self) -> "NemoArchive":
        return self

    def __exit__(self, *exc) -> None:
        if self.tar is not None:
            self.tar.close()

    def open(self, name: str):
        if self.tar is None:
            return open(self.members[name], "rb")
        return self.tar.extractfile(self.members[name])

    def materialize(self, names: list[str], dest: Path) -> Path:
        """Return a directory where `names` exist as files (the folder itself, or copies under dest)."""
        if self.tar is None:
            return self.path
        for name in names:
            if name.startswith("/") or ".." in Path(name).parts:
                raise CheckpointError(f"{self.path}: unsafe member name {name!r}")
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            with self.open(name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return dest

    def config(self) -> dict:
        if CONFIG_NAME not in self.members:
            raise CheckpointError(
                f"{self.path}: no {CONFIG_NAME} in the archive, so it is not a NeMo .nemo checkpoint "
                f"(members: {sorted(self.members)[:10]})")
        with self.open(CONFIG_NAME) as f:
            try:
                cfg = yaml.safe_load(f)
            except yaml.YAMLError as exc:
                raise CheckpointError(f"{self.path}/{CONFIG_NAME}: not valid YAML: {exc}") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{self.path}/{CONFIG_NAME}: expected a mapping, got {type(cfg).__name__}")
        return cfg

    def weights(self, cfg: dict, tmp: Path) -> dict[str, torch.Tensor]:
        """All weights with normalised mcore names, tensor- and pipeline-parallel shards merged."""
        activation = str(cfg_get(cfg, "activation", "gelu"))
        gated, split_glu = activation.endswith("glu"), activation in K.SPLIT_GLU_ACTIVATIONS
        if WEIGHTS_NAME in self.members:
            return _normalize(self._load_ckpt(WEIGHTS_NAME), f"{self.path}:{WEIGHTS_NAME}", split_glu)
        mp = sorted((int(m[1]), n) for n in self.members if (m := _MP_RE.match(n)))
        tp_pp = sorted((int(m[2]), int(m[1]), n) for n in self.members if (m := _TP_PP_RE.match(n)))
        if mp or tp_pp:
            if int(cfg_get(cfg, "virtual_pipeline_model_parallel_size", 1) or 1) > 1:
                raise CheckpointError(f"{self.path}: interleaved (virtual) pipeline shards are not supported; "
                                      "re-save the model with pipeline_model_parallel_size=1")
            stages: dict[int, list[str]] = {}
            for pp, _, name in tp_pp or [(0, r, n) for r, n in mp]:
                stages.setdefault(pp, []).append(name)
            merged = [_merge_tp([_normalize(self._load_ckpt(n), f"{self.path}:{n}", split_glu) for n in names],
                                gated, self.path) for _, names in sorted(stages.items())]
            return _merge_pp(merged)
        dist = [n for n in self.members if n.startswith("model_weights/")]
        if dist:
            root = self.materialize(dist, tmp) / "model_weights"
            return _normalize(read_distributed(root, f"{self.path}:model_weights/"), f"{self.path}:model_weights/",
                              split_glu)
        raise CheckpointError(
            f"{self.path}: no weights found: expected {WEIGHTS_NAME}, mp_rank_XX/{WEIGHTS_NAME}, "
            f"tp_rank_XX_pp_rank_YYY/{WEIGHTS_NAME} or a model_weights/ directory "
            f"(members: {sorted(self.members)[:10]})")

    def _load_ckpt(self, name: str) -> dict:
        # weights_only: a .nemo may come from anywhere. Transformer Engine's _extra_state is an io.BytesIO.
        with self.open(name) as f, torch.serialization.safe_globals([io.BytesIO]):
            try:
                if self.tar is None:  # mmap needs the zip format (torch >= 1.6); older files load whole
                    obj = torch.load(self.members[name], map_location="cpu", weights_only=True,
                                     mmap=zipfile.is_zipfile(self.members[name]))
                else:
                    obj = torch.load(io.BytesIO(f.read()) if self.compressed else f, map_location="cpu",
                                     weights_only=True)
            except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, … for bad files
                raise CheckpointError(f"{self.path}:{name}: cannot read the weights: {exc}") from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # a Lightning checkpoint
        if not isinstance(obj, dict):
            raise CheckpointError(f"{self.path}:{name}: expected a state dict, got {type(obj).__name__}")
        return obj

def _strip_prefix(key: str) -> str:
    for prefix in ("model.module.", "model."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _normalize(sd: dict, where: str, split_glu: bool) -> dict[str, torch.Tensor]:
    """Drop non-weights, strip `model.`, and rename legacy NeMo GPT keys to mcore names.

    split_glu: the legacy MLP keeps gate and up apart (activation swiglu, not fast-swiglu), so
    dense_h_to_4h is the gate alone.
    """
    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor) or any(re.search(p, key) for p in K.IGNORED_KEY_PATTERNS):
            continue
        name = _strip_prefix(key)
        for pattern, repl in K.LEGACY_TO_MCORE:
            name, n = re.subn(pattern, repl, name)
            if n:
                if split_glu and "dense_h_to_4h.weight" in key and "dense_h_to_4h_2" not in key:
                    name = name.replace("mlp.linear_fc1.weight", "mlp.linear_fc1_gate.weight")
                break
        if name in out:
            raise CheckpointError(f"{where}: two tensors map to {name!r}")
        out[name] = value
    return out


def _tp_axis(key: str, gated: bool):
    m = LAYER_RE.match(key)
    axis = K.TP_AXIS.get(m[2] if m else key)
    return 0 if axis == "glu" and not gated else axis


def _merge_tp(shards: list[dict], gated: bool, path: Path) -> dict:
    """Concatenate tensor-parallel shards (one pipeline stage) along each key's split axis."""
    if len(shards) == 1:
        return shards[0]
    out = {}
    for key, first in shards[0].items():
        parts = [first]
        for rank, shard in enumerate(shards[1:], 1):
            if key not in shard:
                raise CheckpointError(f"{path}: tensor-parallel rank {rank} lacks {key!r} that rank 0 has")
            parts.append(shard[key])
        axis = _tp_axis(key, gated)
        if axis is None:
            out[key] = first  # replicated on every rank
        elif axis == "glu":  # each rank holds [gate_r; up_r]
            halves = [p.chunk(2, dim=0) for p in parts]
            out[key] = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
        else:
            out[key] = torch.cat(parts, dim=axis)
    return out


def _merge_pp(stages: list[dict]) -> dict:
    """Renumber each pipeline stage's local layer indices into global ones (stages in order)."""
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for sd in stages:
        count = 0
        for key, value in sd.items():
            m = LAYER_RE.match(key)
            if m:
                out[f"decoder.layers.{int(m[1]) + offset}.{m[2]}"] = value
                count = max(count, int(m[1]) + 1)
            else:
                out.setdefault(key, value)
        offset += count
    return out
