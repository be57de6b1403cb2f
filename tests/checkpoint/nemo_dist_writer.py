"""megatron-core distributed checkpoints (`model_weights/`) written the way megatron-core 0.5-0.8 writes them.

torch_dist (dist_checkpointing/strategies/torch.py): every rank of a tensor-parallel group saves its
own shards through torch.distributed.checkpoint, each weight a torch ShardedTensor with its global
shape; layers are stacked on a leading axis (the layer number is a sharded offset); a fused GLU fc1
is saved as two shards per rank, W at fragment r and V at fragment tp + r of 2·tp (mlp.py
`apply_swiglu_sharded_factory`); replicated weights are saved by their main replica only; Transformer
Engine state is a ShardedObject (bytes). Here two processes on gloo play the two ranks.

zarr (strategies/zarr.py): one zarr v2 array per key, chunked by the ranks' shards, uncompressed, no
fill value; bfloat16 written as 2-byte items whose .zarray dtype is patched to "bfloat16".
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
from pathlib import Path

import torch

from nemo_writer import _kind

_LAYER = re.compile(r"^(model\.decoder\.layers\.)(\d+)\.(.+)$")


def stacked(weights: dict) -> dict[str, tuple[torch.Tensor, bool]]:
    """key → (tensor, stacked?) with per-layer tensors stacked on a new leading axis under the layer-less key."""
    per: dict[str, dict[int, torch.Tensor]] = {}
    out: dict[str, tuple[torch.Tensor, bool]] = {}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            continue
        m = _LAYER.match(key)
        if m:
            per.setdefault(m[1] + m[3], {})[int(m[2])] = value
        else:
            out[key] = (value, False)
    for key, layers in per.items():
        out[key] = (torch.stack([layers[i] for i in sorted(layers)]), True)
    return out


def local_pieces(key: str, t: torch.Tensor, rank: int, tp: int, glu_fused: bool):
    """(piece, offsets) this rank saves of one layer's tensor t; [] when another rank's replica is the main one."""
    kind = _kind(key, glu_fused)
    if kind == "replicated":
        return [(t, [0] * t.dim())] if rank == 0 else []
    if kind == "glu":
        half = t.shape[0] // 2
        step = half // tp
        return [(t[rank * step:(rank + 1) * step], [rank * step] + [0] * (t.dim() - 1)),
                (t[half + rank * step:half + (rank + 1) * step], [half + rank * step] + [0] * (t.dim() - 1))]
    axis = 0 if kind == "column" else t.dim() - 1
    step = t.shape[axis] // tp
    offsets = [0] * t.dim()
    offsets[axis] = rank * step
    return [(t.narrow(axis, rank * step, step), offsets)]


def _rank_main(rank: int, port: int, weights: dict, out: str, tp: int, glu_fused: bool) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=tp)
    sd = {}
    for key, (full, is_stacked) in stacked(weights).items():
        layers = [full[i] for i in range(full.shape[0])] if is_stacked else [full]
        shards = []
        for i, t in enumerate(layers):
            for piece, offsets in local_pieces(key, t, rank, tp, glu_fused):
                if is_stacked:
                    piece, offsets = piece.unsqueeze(0), [i] + offsets
                shards.append(Shard.from_tensor_and_offsets(piece.contiguous().clone(), offsets, rank))
        sd[key] = init_from_local_shards(shards, *full.shape)
    if rank == 0:
        sd["model.decoder.layers.self_attention.core_attention._extra_state/shard_0_2"] = io.BytesIO(b"te")
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(out))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _common(out: Path, backend: str) -> None:
    (out / "metadata.json").write_text(json.dumps({"sharded_backend": backend, "sharded_backend_version": 1,
                                                   "common_backend": "torch", "common_backend_version": 1}))
    torch.save({}, out / "common.pt")


def torch_dist_writer(tp: int = 2, glu_fused: bool = True):
    """A writer for write_nemo(dist=…): `tp` processes save one torch_dist checkpoint together."""
    import torch.multiprocessing as mp

    def write(weights: dict, out: Path) -> None:
        out.mkdir(parents=True)
        mp.spawn(_rank_main, args=(_free_port(), weights, str(out), tp, glu_fused), nprocs=tp, join=True)
        _common(out, "torch_dist")
    return write


def zarr_writer(tp: int = 2, glu_fused: bool = True):
    """A writer for write_nemo(dist=…): Megatron's zarr layout, chunked as `tp` ranks' shards."""
    import ml_dtypes
    import zarr

    def write(weights: dict, out: Path) -> None:
        out.mkdir(parents=True)
        for key, (full, is_stacked) in stacked(weights).items():
            one = full[0] if is_stacked else full
            pieces = local_pieces(key, one, 0, tp, glu_fused) or [(one, None)]
            chunks = ((1,) if is_stacked else ()) + tuple(pieces[0][0].shape)
            bf16 = full.dtype == torch.bfloat16
            data = full.float().numpy().astype(ml_dtypes.bfloat16) if bf16 else full.numpy()
            arr = zarr.create(tuple(full.shape), dtype=data.dtype, store=str(out / key), chunks=chunks,
                              compressor=None, fill_value=None, write_empty_chunks=True)
            if bf16:  # as megatron-core does: zarr records it as raw 2-byte items, then the name is patched
                arr._dtype = data.dtype
                meta = out / key / ".zarray"
                meta.write_text(re.sub(r'"[<|]V2"', '"bfloat16"', meta.read_text()))
            arr[...] = data
        obj = out / "model.decoder.layers.self_attention.core_attention._extra_state"
        obj.mkdir()
        torch.save(io.BytesIO(b"te"), obj / "shard_0_2.pt")
        _common(out, "zarr")
    return write


def dist_names(weights: dict) -> dict:
    """Distributed checkpoints carry `model.` keys (sharded_state_dict(prefix='model.')), never `model.module.`."""
    return {k.replace("model.module.", "model.", 1): v for k, v in weights.items()}

