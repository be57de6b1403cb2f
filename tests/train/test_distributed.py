"""`videoneva train` in several real processes (gloo on CPU): DDP through Fabric's own launcher, torchrun and
`fabric run`, FSDP2, a SIGKILL mid-run and its resume on the same and on another number of processes.

Every run of one group has the same global batch (micro 2 x grad_accum x processes = 4), so the loss
curves must agree; the tolerance is a relative 1e-5 per step (one process and two see the same
micro-batches; what differs is the float summation order of the gradient average).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from videoneva.cli import main as cli
from videoneva.config import load_config
from videoneva.train.loop import TrainConfig, train

VIDEONEVA = str(Path(sys.executable).parent / "videoneva")
RTOL = 1e-5
STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small demo-data set (9 train records of multi-turn video questions) plus one text-only record."""
    out = tmp_path_factory.mktemp("dist") / "data"
    assert cli(["demo-data", f"out={out}", "n=12", "seed=3", "heldout_fraction=0.25", "media_token=left",
                "multi_turn=true"]) == 0
    records = json.loads((out / "train.json").read_text())
    text_only = {"id": "text-only", "conversations": [{"from": "human", "value": "What is two plus two?"},
                                                      {"from": "gpt", "value": "four"}]}
    (out / "mixed.json").write_text(json.dumps(records + [text_only]))
    return out


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.data_path={data / 'mixed.json'}", f"data.video_folder={data}", f"output_dir={out}",
            f"data.eval_data_path={data / 'heldout.json'}", "data.num_frames=2", "data.conv_template=nv_dpo",
            "model.image_size=32", "model.patch_size=8", "model.vision_hidden=32", "model.vision_intermediate=64",
            "model.text_hidden=64", "model.text_intermediate=128", "model.vocab_size=300",
            "train.micro_batch_size=2", "train.warmup_steps=2", "train.lr=3e-3", f"train.max_steps={STEPS}",
            "save_every=0", "log_every=1", "trainer.accelerator=cpu", *extra]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "LT_", "TORCHELASTIC"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]


def _losses(out: Path) -> list[float]:
    return json.loads((out / "train_summary.json").read_text())["losses"]


def _summary(out: Path) -> dict:
    return json.loads((out / "train_summary.json").read_text())


def _close(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=RTOL, atol=0)


def _one_process(args: list[str]) -> dict:
    return train(load_config(TrainConfig, args))


@pytest.fixture(scope="module")
def ddp_runs(data, tmp_path_factory):
    """One process (grad_accum 2, in this process) and two DDP processes (grad_accum 1, Fabric's launcher)."""
    root = tmp_path_factory.mktemp("ddp")
    _one_process(_args(data, root / "one", "train.grad_accum=2"))
    _run([VIDEONEVA, "train", *_args(data, root / "two", "trainer.devices=2", "train.grad_accum=1")])
    return root


def test_two_ddp_processes_follow_the_one_process_loss_curve_and_write_one_checkpoint(ddp_runs):
    from videoneva.checkpoint.native import load_checkpoint

    one, two = _summary(ddp_runs / "one"), _summary(ddp_runs / "two")
    assert two["processes"] == 2 and two["steps"] == STEPS
    _close(_losses(ddp_runs / "two"), _losses(ddp_runs / "one"))
    assert [e["n"] for e in two["eval"]] == [e["n"] for e in one["eval"]] == [15]  # an odd number of batches: 1
    assert two["eval"][0]["exact_match"] == one["eval"][0]["exact_match"]
    # one checkpoint: process 0 wrote last/ and final/, nothing half-written is left
    assert sorted(p.name for p in (ddp_runs / "two").iterdir()) == ["final", "last", "train_summary.json"]
    assert sorted(p.name for p in (ddp_runs / "two" / "last").iterdir() if p.suffix in (".pt", ".partial")) == [
        "trainer_state.pt"]
    a, b = load_checkpoint(ddp_runs / "one" / "final").model, load_checkpoint(ddp_runs / "two" / "final").model
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        if name.endswith("k_proj.bias"):  # softmax ignores a key bias: its gradient is rounding noise, which
            continue                      # Adam scales up, so it differs with the order of the reduction
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-6, msg=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process it started, by pid."""
    tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in tree:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(tree, timeout=60)


def test_a_killed_run_resumes_with_the_uninterrupted_losses(ddp_runs, data, tmp_path):
    """torchrun starts two processes; they are SIGKILLed right after the checkpoint of step 2; the run resumes
    from it on two processes (`fabric run`, Lightning's launcher) and on one (in this process)."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "videoneva.cli",
           "train", *_args(data, out, "trainer.devices=2", "train.grad_accum=1", "save_every=2")]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "saved step 2 to" in line:
                break
    finally:
        _kill_tree(proc)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-4000:]
    saved = torch.load(out / "last" / "trainer_state.pt", weights_only=True)
    assert 2 <= saved["step"] < STEPS and saved["world_size"] == 2
    other = tmp_path / "other"
    shutil.copytree(out, other)
    _run([str(Path(sys.executable).parent / "fabric"), "run", "--accelerator=cpu", "--devices=2",
          f"--main-port={_free_port()}", VIDEONEVA, "train",
          *_args(data, out, "trainer.devices=2", "train.grad_accum=1", "resume=true")])
    _close(_losses(out), _losses(ddp_runs / "two"))
    resumed = _one_process(_args(data, other, "train.grad_accum=2", "resume=true"))
    assert resumed["processes"] == 1
    _close(_losses(other), _losses(ddp_runs / "one"))


def test_fsdp_with_lora_checkpointing_and_isolated_turns_matches_one_process_and_resumes_on_one(data, tmp_path):
    """FSDP2 over two processes (every transformer layer sharded) for 3 steps, resumed on one FSDP process to
    step 6: the losses of a one-process run with the same global batch, and a final checkpoint with LoRA merged."""
    from videoneva.checkpoint.native import load_checkpoint

    recs = json.loads((data / "train.json").read_text())  # FSDP needs media in every record
    (tmp_path / "media.json").write_text(json.dumps(recs))
    extra = [f"data.data_path={tmp_path / 'media.json'}", "train.lora.enable=true", "train.lora.r=4",
             "train.activation_checkpointing=true", "data.isolate_turns=true"]
    _one_process(_args(data, tmp_path / "one", "train.grad_accum=2", *extra))
    sharded = tmp_path / "sharded"
    _run([VIDEONEVA, "train", *_args(data, sharded, "trainer.devices=2", "trainer.strategy=fsdp",
                                     "train.grad_accum=1", "train.max_steps=3", *extra)])
    assert _summary(sharded)["processes"] == 2
    _close(_losses(sharded), _losses(tmp_path / "one")[:3])
    _run([VIDEONEVA, "train", *_args(data, sharded, "trainer.strategy=fsdp", "train.grad_accum=2", "resume=true",
                                     *extra)])
    assert _summary(sharded)["steps"] == STEPS and _summary(sharded)["processes"] == 1
    _close(_losses(sharded), _losses(tmp_path / "one"))
    a, b = load_checkpoint(tmp_path / "one" / "final").model, load_checkpoint(sharded / "final").model
    assert not any("lora" in k for k in b.state_dict())
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        if name.endswith("k_proj.bias"):  # softmax ignores a key bias: its gradient is rounding noise, which
            continue                      # Adam scales up, so it differs with the order of the reduction
        torch.testing.assert_close(pb, pa, rtol=1e-4, atol=1e-6, msg=name)
