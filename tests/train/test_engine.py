"""The engine keys of `videoneva train`: what is refused before any work, mixed precision, the data order."""
from __future__ import annotations

import json

import pytest
import torch
from train_helpers import tiny_config

from videoneva.errors import ConfigError
from videoneva.train.config import training_precision
from videoneva.train.loop import train
from videoneva.train.order import MicroBatchOrder, rank_micro_batches


@pytest.fixture()
def records(tmp_path, media_dir):
    recs = [{"id": str(i), "video": "clip.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhat color is the shape?"},
        {"from": "gpt", "value": ["red", "blue", "green"][i % 3]}]} for i in range(4)]
    p = tmp_path / "train.json"
    p.write_text(json.dumps(recs))
    return p


_cfg = tiny_config


def test_precision_keys_are_lightnings():
    assert [training_precision(v) for v in (32, "32", "bf16", "bf16-mixed", "16", "16-mixed", "bf16-true")] == [
        "32-true", "32-true", "bf16-mixed", "bf16-mixed", "16-mixed", "16-mixed", "bf16-true"]
    with pytest.raises(ConfigError, match="trainer.precision='64'"):
        training_precision("64")


@pytest.mark.parametrize("keys, message", [
    (["trainer.strategy=deepspeed"], "trainer.strategy=deepspeed is not supported"),
    (["trainer.precision=16-mixed", "trainer.accelerator=cpu"], "trainer.precision=16-mixed needs a GPU"),
    (["trainer.strategy=zero"], "trainer.strategy='zero' is not valid"),
    (["trainer.devices=0"], "trainer.devices"),
    (["train.micro_batch_size=5"], "has 4 records, fewer than train.micro_batch_size=5"),
    (["trainer.devices=2", "trainer.accelerator=cpu", "vision_pretrain.scenes=x.jsonl", "vision_pretrain.batch_size=5"],
     "vision_pretrain.batch_size=5 must be a multiple of the 2"),
])
def test_refused_before_any_work(records, media_dir, tmp_path, keys, message):
    with pytest.raises(ConfigError, match=message):
        train(_cfg(records, media_dir, tmp_path / "run", *keys))
    assert not (tmp_path / "run").exists(), "nothing may be written before the refusal"


def test_fsdp_refuses_text_only_records_by_id(records, media_dir, tmp_path):
    recs = json.loads(records.read_text()) + [{"id": "plain", "conversations": [
        {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}]
    records.write_text(json.dumps(recs))
    with pytest.raises(ConfigError, match=r"trainer.strategy=fsdp needs media in every record: 1 of data.data_path.*'plain'"):
        train(_cfg(records, media_dir, tmp_path / "run", "trainer.strategy=fsdp", "trainer.devices=2",
                   "trainer.accelerator=cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_without_cuda_is_refused(records, media_dir, tmp_path):
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu but CUDA is not available"):
        train(_cfg(records, media_dir, tmp_path / "run", "trainer.accelerator=gpu"))


def test_a_launcher_that_disagrees_with_the_keys_is_refused(records, media_dir, tmp_path, monkeypatch):
    for k, v in {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match="launcher started 2 processes per node, 4 in all, but trainer.devices=1"):
        train(_cfg(records, media_dir, tmp_path / "run", "trainer.accelerator=cpu"))


def test_resume_with_another_micro_batch_size_is_refused(records, media_dir, tmp_path):
    train(_cfg(records, media_dir, tmp_path / "run", "train.max_steps=1"))
    with pytest.raises(ConfigError, match="trained with train.micro_batch_size=2, got 1"):
        train(_cfg(records, media_dir, tmp_path / "run", "train.max_steps=2", "resume=true",
                   "train.micro_batch_size=1"))


def test_bf16_mixed_trains_in_float32_weights_with_bfloat16_matmuls(records, media_dir, tmp_path):
    from videoneva.checkpoint.native import load_checkpoint

    full = train(_cfg(records, media_dir, tmp_path / "fp32", "train.max_steps=2", "trainer.accelerator=cpu"))
    mixed = train(_cfg(records, media_dir, tmp_path / "mixed", "train.max_steps=2", "trainer.accelerator=cpu",
                       "trainer.precision=bf16-mixed", "data.isolate_turns=true"))
    a = json.loads((tmp_path / "fp32" / "train_summary.json").read_text())["losses"]
    b = json.loads((tmp_path / "mixed" / "train_summary.json").read_text())["losses"]
    assert a != b, "autocast must change the arithmetic"
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=2e-2, atol=0)  # bfloat16: 8 mantissa bits
    assert mixed["steps"] == full["steps"] == 2
    model = load_checkpoint(mixed["final"]).model
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bf16_true_keeps_bfloat16_weights(records, media_dir, tmp_path):
    s = train(_cfg(records, media_dir, tmp_path / "run", "train.max_steps=2", "trainer.accelerator=cpu",
                   "trainer.precision=bf16-true"))
    state = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=True)
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} == {torch.bfloat16}
    assert s["last_loss"] == s["last_loss"]  # finite, not NaN


def _old_order(n: int, micro: int, seed: int, count: int) -> list[list[int]]:
    """The order one process trained in before several processes shared it: shuffle per epoch, consecutive cuts."""
    out, epoch = [], 0
    while len(out) < count:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        out += [order[p: p + micro] for p in range(0, n - micro + 1, micro)]
        epoch += 1
    return out[:count]


def test_the_micro_batch_stream_is_shared_out_and_resumable():
    order = MicroBatchOrder(n_records=11, micro=3, seed=7)  # 3 micro-batches per epoch, 2 records left out
    assert [order.micro_batch(k) for k in range(10)] == _old_order(11, 3, 7, 10)
    # 2 processes x grad_accum 2 see, step by step, what 1 process x grad_accum 4 sees
    one = [rank_micro_batches(c, 4, 1, 0) for c in range(0, 16, 4)]
    two = [sorted(rank_micro_batches(c, 2, 2, 0) + rank_micro_batches(c, 2, 2, 1)) for c in range(0, 16, 4)]
    assert one == two
    with pytest.raises(ConfigError, match="fewer than train.micro_batch_size=3"):
        MicroBatchOrder(2, 3, 0)
