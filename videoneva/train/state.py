"""output_dir/last: everything a run needs to resume, written through the engine.

trainer_state.pt holds the full (unsharded) model and optimizer state, gathered by Fabric and
written by process 0 only, so a run resumes on the same or another number of processes. It is
written under a temporary name and renamed into place: a trainer_state.pt that exists is
complete, even when the processes were killed while writing the next one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch

from videoneva.checkpoint.native import SETTINGS_FILE
from videoneva.errors import ConfigError

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"
FORMAT = 2  # the model state is TrainStep's ("model." + the model's keys); data position in micro-batches


def _gathered_rng(fabric) -> list[torch.Tensor]:
    """Every process's CPU random state (process order)."""
    mine = torch.get_rng_state()
    if fabric.world_size == 1:
        return [mine]
    return [t.cpu().clone() for t in fabric.all_gather(mine.to(fabric.device))]  # own storage each


def save_last(fabric, last: Path, step_module, opt, sched, tok, settings, meta: dict) -> None:
    """Write output_dir/last (every process calls this; process 0 writes).

    Args:
        fabric: the run's Fabric.
        last: output_dir/last.
        step_module, opt, sched: the engine-wrapped TrainStep, its optimizer and the LR scheduler.
        tok, settings: the tokenizer and the checkpoint settings.
        meta: plain values: step, losses, micro_batches (data position), micro_batch_size, config.
    """
    rng = _gathered_rng(fabric)
    if fabric.is_global_zero:
        last.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(last)
        (last / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings), indent=2))
    partial = last / (STATE_FILE + ".partial")
    fabric.save(partial, {"model": step_module, "optimizer": opt, "scheduler": sched, "rng": rng, "format": FORMAT,
                          "world_size": fabric.world_size, **meta})
    if fabric.is_global_zero:
        os.replace(partial, last / STATE_FILE)
        log.info("saved step %d to %s", meta["step"], last)
    fabric.barrier()


def load_last(fabric, last: Path, step_module, opt, sched, micro_batch_size: int) -> dict:
    """Restore model, optimizer, scheduler and this process's random state from output_dir/last.

    Returns the plain values save_last() stored (step, losses, micro_batches, …). A changed
    train.micro_batch_size is refused: the data position counts micro-batches.
    """
    path = last / STATE_FILE
    head = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if head.get("format") != FORMAT:
        raise ConfigError(f"{path} was written by another version of videoneva train (format "
                          f"{head.get('format')!r}, expected {FORMAT}); start a new run")
    if head["micro_batch_size"] != micro_batch_size:
        raise ConfigError(f"resume: {path} was trained with train.micro_batch_size={head['micro_batch_size']}, "
                          f"got {micro_batch_size}; the data position counts micro-batches of that size "
                          "(change train.grad_accum or trainer.devices instead)")
    del head
    rest = fabric.load(path, {"model": step_module, "optimizer": opt, "scheduler": sched})
    rng = rest["rng"]
    torch.set_rng_state(rng[fabric.global_rank % len(rng)].clone())  # set_rng_state reads the storage from 0
    return rest
