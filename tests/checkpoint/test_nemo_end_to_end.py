"""A NeMo NeVA `.nemo` through the product: infer straight from it, convert it, build an engine from it.

The archive is the stock NeVA config with NeMo's NeVA SentencePiece tokenizer, whose vocabulary NeMo
pads from 428 tokens to 512 rows; answers must agree however the model is loaded, and no engine may
carry the padded rows.
"""
from __future__ import annotations

import json

import pytest
import torch
from nemo_fixtures import stock_neva_archive
from sentencepiece_models import make_models

from videoneva.checkpoint.native import load_checkpoint
from videoneva.checkpoint.nemo_tokenizer import NemoSentencePieceTokenizer
from videoneva.cli import main as cli

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    return stock_neva_archive(d, make_models(d / "sp")["neva"], **{"data.num_frames": 2})[1]


def answers(tmp_path, media_dir, prompt_file, name, source_args):
    prompts = prompt_file([{"video": "clip.mp4", "text": "What color?", "question_id": 0},
                           {"image": "still.png", "text": "How many?", "question_id": 1}])
    out = tmp_path / f"{name}.jsonl"
    assert cli(["infer", *source_args, f"prompt_file={prompts}", f"inference.media_base_path={media_dir}",
                "inference.greedy=true", "inference.tokens_to_generate=6", "inference.insert_media_token=right",
                "data.num_frames=2", "print_answers=false", f"output_file={out}"]) == 0
    return [json.loads(x)["raw_response"] for x in out.read_text().splitlines()]


def test_infer_convert_and_build_agree(archive, tmp_path, media_dir, prompt_file):
    direct = answers(tmp_path, media_dir, prompt_file, "direct", [f"neva_model_file={archive}"])
    native = tmp_path / "native"
    assert cli(["convert", f"neva_model_file={archive}", f"output={native}"]) == 0
    ck = load_checkpoint(native)
    assert isinstance(ck.tokenizer, NemoSentencePieceTokenizer) and ck.settings.conv_template == "llama_2"
    assert ck.model.config.text_config.vocab_size == 512 and len(ck.tokenizer) == 428
    assert answers(tmp_path, media_dir, prompt_file, "native", [f"neva_model_file={native}"]) == direct

    engine = tmp_path / "engine"
    assert cli(["build", f"checkpoint={native}", f"output={engine}", "max_batch_size=1", "max_input_len=200",
                "max_output_len=16", "data.num_frames=2"]) == 0
    assert json.loads((engine / "llm" / "torch" / "config.json").read_text())["vocab_size"] == 428
    assert json.loads((engine / "llm" / "trtllm_ckpt" / "config.json").read_text())["vocab_size"] == 428
    assert answers(tmp_path, media_dir, prompt_file, "engine", [f"engine_dir={engine}"]) == direct
    assert all(isinstance(a, str) for a in direct) and len(direct) == 2
