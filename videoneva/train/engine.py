"""The distributed engine of `videoneva train`: Lightning Fabric, configured from the trainer.* keys.

Fabric owns the processes (its own launcher, `fabric run`, or torchrun), the device, mixed
precision, gradient synchronisation and sharding, and checkpoint gathering; the training loop
(videoneva/train/loop.py) stays plain PyTorch. Strategies:

- auto: one process on one device, or DDP when there are several processes.
- ddp: every process holds the whole model; gradients are averaged (NCCL on GPUs, gloo on CPUs).
- fsdp: FSDP2 (torch.distributed.fsdp.fully_shard) through Fabric's ModelParallelStrategy with a
  one-dimensional data-parallel mesh: every transformer layer of the LLM and of the vision tower is
  its own shard unit, the rest (embeddings, projector, LM head) the root unit. Parameters,
  gradients and optimizer state are split over the processes. Fabric's older FSDPStrategy (FSDP1)
  refuses CPUs; FSDP2 runs on both, so the same code path is exercised on CPU with gloo.
- deepspeed: refused (the engine has it, but nothing here can run or test it).

Every combination that cannot work is refused in check_run() before a process is started.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from videoneva.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_accelerator(name: str) -> str:
    """'cuda' or 'cpu' for trainer.accelerator (auto: cuda when there is one)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={name} but CUDA is not available here; use trainer.accelerator=cpu "
                              "or auto")
        return "cuda"
    return "cpu"


def media_less(records: list[dict]) -> list[str]:
    """Ids of the records with neither video nor image."""
    return [str(r.get("id", i)) for i, r in enumerate(records) if not (r.get("video") or r.get("image"))]


def launched_world() -> Optional[tuple[int, int]]:
    """(processes on this node, processes in all) when an outside launcher (torchrun, `fabric run`)
    started this process; None when Fabric starts the processes itself."""
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
    return None


def check_run(cfg, records: list[dict], eval_records: list[dict]) -> str:
    """Refuse, by name and before any work, what the engine cannot do with these keys; returns the accelerator.

    Args:
        cfg: the TrainConfig.
        records: the training records.
        eval_records: the held-out records scored during training (may be empty).
    """
    t = cfg.trainer
    if t.strategy == "deepspeed":
        raise ConfigError("trainer.strategy=deepspeed is not supported (it is neither installed nor tested here); "
                          "trainer.strategy=fsdp shards parameters, gradients and optimizer state like ZeRO-3")
    accelerator = resolve_accelerator(t.accelerator)
    if accelerator == "cuda" and t.devices > torch.cuda.device_count():
        raise ConfigError(f"trainer.devices={t.devices} but this node has {torch.cuda.device_count()} CUDA devices")
    if t.precision in ("16-mixed", "16-true") and accelerator == "cpu":
        raise ConfigError(f"trainer.precision={t.precision} needs a GPU (float16 on CPU is not supported by the "
                          "engine); on CPU use 32 or bf16-mixed")
    if t.strategy == "fsdp":
        for what, recs in (("data.data_path", records), ("data.eval_data_path", eval_records)):
            bare = media_less(recs)
            if bare:
                raise ConfigError(
                    f"trainer.strategy=fsdp needs media in every record: {len(bare)} of {what}'s records have no "
                    f"video or image (ids {bare[:5]}); the shard units of the vision tower must run in every process "
                    "at every step. Use trainer.strategy=ddp, or drop the text-only records")
    vp = cfg.vision_pretrain
    if vp.scenes and vp.batch_size % t.world_size:
        raise ConfigError(f"vision_pretrain.batch_size={vp.batch_size} must be a multiple of the {t.world_size} "
                          "training processes (each takes an equal slice of every step's frames)")
    outside = launched_world()
    if outside is not None and outside != (t.devices, t.world_size):
        raise ConfigError(f"the launcher started {outside[0]} processes per node, {outside[1]} in all, but "
                          f"trainer.devices={t.devices} and trainer.num_nodes={t.num_nodes}: set them to match")
    return accelerator


def fsdp2_layers(module: torch.nn.Module, mesh) -> torch.nn.Module:
    """Fabric's parallelize_fn for trainer.strategy=fsdp: fully_shard every transformer layer, then the root."""
    from torch.distributed.fsdp import fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    dp = mesh["data_parallel"]
    for m in list(module.modules()):
        if isinstance(m, GradientCheckpointingLayer):
            fully_shard(m, mesh=dp)
    fully_shard(module, mesh=dp)
    return module


def _direct_checkpoint_io():
    """A CheckpointIO that torch.saves straight into the file. Lightning's TorchCheckpointIO serialises
    the whole checkpoint into memory first (cloud_io._atomic_save), holding two more copies of the
    weights at once; videoneva/train/state.py gets the same atomicity by writing a temporary name
    and renaming it."""
    from lightning.fabric.plugins import TorchCheckpointIO

    class DirectCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            if storage_options is not None:
                raise TypeError("storage_options are not supported")
            torch.save(checkpoint, path)

    return DirectCheckpointIO()


def make_fabric(cfg, accelerator: str, unused_parameters: bool):
    """The Lightning Fabric for these keys (not launched yet).

    Args:
        cfg: the TrainConfig.
        accelerator: check_run()'s result.
        unused_parameters: some steps leave trainable parameters unused (text-only records skip the
            vision tower and projector): DDP then looks for them after every backward pass.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy, ModelParallelStrategy

    t = cfg.trainer
    if t.strategy == "fsdp":
        strategy = ModelParallelStrategy(fsdp2_layers, data_parallel_size=t.world_size, tensor_parallel_size=1,
                                         save_distributed_checkpoint=False)
    elif t.strategy == "ddp" or t.world_size > 1:
        strategy = DDPStrategy(find_unused_parameters=unused_parameters)
    else:
        strategy = "auto"
    if accelerator == "cpu" and t.devices > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // t.devices))  # no oversubscription of the cores
    # FSDP gathers the full state itself and writes it with torch.save; it takes no CheckpointIO
    plugins = [] if t.strategy == "fsdp" else [_direct_checkpoint_io()]
    return Fabric(accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
                  precision=t.precision, plugins=plugins)


def launch(fabric) -> None:
    """Start this node's other processes with Fabric's own launcher, unless an outside launcher did:
    torchrun (Fabric then starts nothing) or `fabric run` (Fabric joined its processes on construction)."""
    if os.environ.get("LT_CLI_USED") != "1":
        fabric.launch()
