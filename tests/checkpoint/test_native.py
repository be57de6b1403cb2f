"""Native checkpoint format, the transformers Llava importer, `videoneva convert`, and bad checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

from videoneva.checkpoint.native import SETTINGS_FILE, load_checkpoint
from videoneva.cli import main as cli
from videoneva.errors import CheckpointError


def test_native_round_trip(tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)
    assert ck.kind == "native" and ck.settings.conv_template == "nv_steerlm" and ck.settings.num_frames == 4
    again = load_checkpoint(tiny_checkpoint)
    for k, v in ck.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_plain_transformers_llava_dir_imports_with_defaults(copy_checkpoint):
    d = copy_checkpoint()
    (d / SETTINGS_FILE).unlink()
    ck = load_checkpoint(d)
    assert ck.kind == "hf_llava" and ck.settings.conv_template == "v1"


def test_convert_writes_native_and_refuses_to_overwrite(copy_checkpoint, tmp_path, capsys):
    src = copy_checkpoint()
    (src / SETTINGS_FILE).unlink()
    out = tmp_path / "native"
    assert cli(["convert", f"neva_model_file={src}", f"output={out}", "conv_template=nvgpt", "num_frames=6"]) == 0
    s = json.loads((out / SETTINGS_FILE).read_text())
    assert s["conv_template"] == "nvgpt" and s["num_frames"] == 6 and s["source"]["kind"] == "hf_llava"
    assert load_checkpoint(out).kind == "native"
    assert cli(["convert", f"neva_model_file={src}", f"output={out}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err


def test_missing_files_are_listed(copy_checkpoint):
    d = copy_checkpoint()
    for f in d.glob("*.safetensors"):
        f.unlink()
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(d)
    assert "model weights" in str(exc.value) and "tokenizer" in str(exc.value)


def test_unknown_architecture_is_refused(copy_checkpoint):
    d = copy_checkpoint()
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown architecture|gpt2"):
        load_checkpoint(d)


def test_newer_settings_format_is_refused(copy_checkpoint):
    d = copy_checkpoint()
    s = json.loads((d / SETTINGS_FILE).read_text())
    s["format_version"] = 99
    (d / SETTINGS_FILE).write_text(json.dumps(s))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(d)
