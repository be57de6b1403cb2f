"""Config: the seed's keys, overrides, and errors that name the key and the valid choices."""
from __future__ import annotations

import pytest

from videoneva.config import InferConfig, load_config
from videoneva.errors import ConfigError
from videoneva.runtime.pipeline import resolve_image_token_len

SEED_COMMAND = """tensor_model_parallel_size=4 pipeline_model_parallel_size=1 neva_model_file=/p/proj
base_model_file=/p/base trainer.devices=4 trainer.precision=bf16 prompt_file=/p/q.jsonl
inference.media_base_path=/p/videos inference.media_type=video output_file=/p/out/
inference.temperature=0.2 inference.top_k=0 inference.top_p=0.9 inference.greedy=False
inference.add_BOS=False inference.all_probs=False inference.repetition_penalty=1.2
inference.insert_media_token=right inference.tokens_to_generate=256 quantization.algorithm=awq
quantization.enable=False""".split()


def test_seed_command_line_parses():
    cfg = load_config(InferConfig, SEED_COMMAND)
    assert cfg.tensor_model_parallel_size == 4 and cfg.trainer.precision == "bf16"
    assert cfg.inference.media_type == "video" and cfg.inference.insert_media_token == "right"
    assert cfg.inference.greedy is False and cfg.inference.repetition_penalty == 1.2
    assert cfg.quantization.algorithm == "awq" and cfg.quantization.enable is False


def test_yaml_defaults_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("inference:\n  temperature: 0.7\n  top_k: 5\ndata:\n  num_frames: 16\n")
    cfg = load_config(InferConfig, [f"config={y}", "inference.top_k=3"])
    assert cfg.inference.temperature == 0.7 and cfg.inference.top_k == 3 and cfg.data.num_frames == 16


@pytest.mark.parametrize("item, words", [
    ("inference.temprature=1", ["unknown config key 'inference.temprature'", "inference.temperature"]),
    ("inference.media_type=audio", ["inference.media_type", "'image', 'video'"]),
    ("data.splice_single_frame=start", ["data.splice_single_frame", "'first', 'middle', 'last'"]),
    ("trainer.precision=8", ["trainer.precision", "'32', '16', 'bf16'"]),
    ("inference.insert_media_token=top", ["inference.insert_media_token", "'left', 'right'"]),
    ("data.frame_token_pool=3", ["data.frame_token_pool", "1, 2, 4"]),
    ("inference.tokens_to_generate=0", ["inference.tokens_to_generate"]),
    ("inference.top_p=1.5", ["inference.top_p"]),
    ("inference.tokens_to_generate=many", ["inference.tokens_to_generate"]),
    ("quantization.algorithm=gptq", ["quantization.algorithm", "'awq'"]),
    ("justaword", ["key=value"]),
    ("prefix_cache_bytes=-1", ["prefix_cache_bytes", ">= 0"]),
])
def test_bad_values_name_key_and_choices(item, words):
    with pytest.raises(ConfigError) as exc:
        load_config(InferConfig, [item])
    for w in words:
        assert w in str(exc.value)


@pytest.mark.parametrize("value, expected", [(32, "32"), ("16-mixed", "16"), ("bf16-mixed", "bf16"), ("bf16", "bf16")])
def test_precision_forms(value, expected):
    assert load_config(InferConfig, [f"trainer.precision={value}"]).trainer.precision == expected


def test_image_token_len_is_derived_and_checked():
    assert resolve_image_token_len(224, 14, 1, None) == 256
    assert resolve_image_token_len(224, 14, 2, 64) == 64
    assert resolve_image_token_len(336, 14, 1, None) == 576
    with pytest.raises(ConfigError, match="conflicts"):
        resolve_image_token_len(224, 14, 1, 576)
