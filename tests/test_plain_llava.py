"""A plain transformers Llava checkpoint (4096-context Llama, Unigram tokenizer): the default build fits it and
in-process infer answers every good line and flags every bad one, with the template's end strings in force."""
from __future__ import annotations

import json

import pytest
from plain_llava import CONTEXT, good_and_bad_lines, make_plain_llava

from videoneva.cli import main as cli


@pytest.fixture(scope="module")
def plain_engine(tmp_path_factory):
    d = tmp_path_factory.mktemp("plain")
    ckpt = make_plain_llava(d / "llava-4k")
    out = d / "engine"
    assert cli(["build", f"checkpoint={ckpt}", f"output={out}"]) == 0  # no size keys
    return ckpt, out


def test_default_build_fits_the_4096_context(plain_engine):
    _, engine = plain_engine
    m = json.loads((engine / "manifest.json").read_text())
    assert m["source"]["kind"] == "hf_llava"
    assert m["derived"]["max_input_len"] + m["derived"]["max_output_len"] == CONTEXT
    assert m["derived"]["max_output_len"] == 256 and m["derived"]["num_frames"] * 256 < m["derived"]["max_input_len"]


@pytest.mark.parametrize("source", ["engine_dir", "neva_model_file"])
def test_infer_answers_every_good_line_and_flags_every_bad_one(plain_engine, media_dir, prompt_file, tmp_path,
                                                                 capsys, source):
    ckpt, engine = plain_engine
    lines, good, bad = good_and_bad_lines()
    out = tmp_path / "answers.jsonl"
    model = f"engine_dir={engine}" if source == "engine_dir" else f"neva_model_file={ckpt}"
    rc = cli(["infer", model, f"prompt_file={prompt_file(lines)}", f"output_file={out}",
              f"inference.media_base_path={media_dir}", "inference.tokens_to_generate=12",
              "inference.insert_media_token=right", "print_answers=false"])
    assert rc == 1
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == len(lines)
    answered = {r.get("question_id") for r in recs if "error" not in r}
    failed = {r.get("question_id") for r in recs if "error" in r}
    assert answered == good and failed == bad
    for r in recs:
        if "error" not in r:
            assert r["prompt"].endswith(" ASSISTANT:") and r["metadata"]["num_frames"] == 8
        else:
            assert "internal error" not in r["error"], r  # bad input is named, not a crash
    err = capsys.readouterr().err
    assert f"{len(bad)} of {len(lines)} lines failed" in err
