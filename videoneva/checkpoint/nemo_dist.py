"""Read a megatron-core distributed checkpoint (`model_weights/` of a `.nemo`) into whole tensors.

Two formats, named by `metadata.json`'s `sharded_backend` (megatron-core dist_checkpointing, 0.5-0.8):

- torch_dist (strategies/torch.py): a torch.distributed.checkpoint directory (`.metadata` and
  `__*_*.distcp` files) holding every tensor with its global shape, written as chunks by many ranks.
  It is read with torch's public API: the metadata gives each tensor's global size and dtype, and
  `torch.distributed.checkpoint.load` fills whole tensors from whatever chunks the ranks wrote.
- zarr (strategies/zarr.py, the default of NeMo 1.22/1.23): one zarr v2 array directory per tensor,
  uncompressed, chunked by the writing ranks' shards; bfloat16 arrays carry the dtype name
  "bfloat16", which numpy understands once `ml_dtypes` is imported.

Layers are stored stacked on a leading axis (`decoder.layers.<name>` of shape [num_layers, …]) and are
split back into `decoder.layers.<i>.<name>`. Non-tensor entries (Transformer Engine `_extra_state`)
are skipped.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from videoneva.errors import CheckpointError

_STACKED_RE = re.compile(r"^(model\.(?:module\.)?)?decoder\.layers\.(?!\d+\.)(.+)$")
BACKENDS = ("torch_dist", "zarr")


def read_distributed(root: Path, where: str) -> dict[str, torch.Tensor]:
    """All tensors of the distributed checkpoint at root (its `metadata.json` names the format)."""
    meta = root / "metadata.json"
    backend = json.loads(meta.read_text()).get("sharded_backend") if meta.is_file() else None
    if backend is None:
        backend = "torch_dist" if (root / ".metadata").is_file() else "unknown"
    if backend == "torch_dist":
        sd = _read_torch_dist(root, where)
    elif backend == "zarr":
        sd = _read_zarr(root, where)
    else:
        raise CheckpointError(f"{where}: model_weights/ is a {backend!r} distributed checkpoint; readable: "
                              f"{list(BACKENDS)}")
    return _unstack(sd)


def _read_torch_dist(root: Path, where: str) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(root))
    try:
        metadata = reader.read_metadata()
    except Exception as exc:  # a missing or truncated .metadata raises anything from OSError to pickle errors
        raise CheckpointError(f"{where}: cannot read the torch_dist metadata: {exc}") from None
    sd = {key: torch.empty(tuple(m.size), dtype=m.properties.dtype)
          for key, m in metadata.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}
    try:
        dcp.load(sd, storage_reader=dcp.FileSystemReader(str(root)), no_dist=True)
    except Exception as exc:
        raise CheckpointError(f"{where}: cannot read the torch_dist checkpoint: {exc}") from None
    return sd


def _read_zarr(root: Path, where: str) -> dict[str, torch.Tensor]:
    import ml_dtypes  # noqa: F401  (registers numpy's "bfloat16", the dtype name Megatron writes)
    import zarr

    sd = {}
    for zarray in sorted(root.glob("*/.zarray")):
        key = zarray.parent.name
        try:
            array = np.asarray(zarr.open(str(zarray.parent), mode="r")[...])
        except Exception as exc:  # zarr raises ValueError, KeyError, OSError … for damaged arrays
            raise CheckpointError(f"{where}: cannot read zarr array {key}: {exc}") from None
        if array.dtype.name == "bfloat16":
            sd[key] = torch.from_numpy(array.view(np.uint16).copy()).view(torch.bfloat16)
        else:
            sd[key] = torch.from_numpy(np.ascontiguousarray(array))
    if not sd:
        raise CheckpointError(f"{where}: the zarr checkpoint in model_weights/ holds no arrays")
    return sd


def _unstack(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        m = _STACKED_RE.match(key)
        if m is None:
            out[key] = value
            continue
        for i in range(value.shape[0]):
            out[f"{m[1] or ''}decoder.layers.{i}.{m[2]}"] = value[i]
    for key in [k for k in out if k.endswith("mlp.linear_fc1.weight_w")]:  # singleton_local_shards layout
        out[key[:-2]] = torch.cat([out.pop(key), out.pop(key[:-2] + "_v")])
    return out
