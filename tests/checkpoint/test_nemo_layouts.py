"""Every checkpoint layout NeMo wrote for NeVA imports to the logits of a transformers Llava with the same weights.

The archives come from nemo_writer.py / nemo_dist_writer.py, which follow NeMo's converters, its
partition script, megatron-core's distributed checkpoint strategies and the stock NeVA / Video NeVA
configs (sizes overridden), and from the SentencePiece tokenizers NeVA uses.
"""
from __future__ import annotations

import pytest
import torch
from nemo_dist_writer import dist_names, torch_dist_writer, zarr_writer
from nemo_fixtures import FRAMES, MEAN, SIZES, STD, assert_logits, clip_dir, reference, sp_artifact
from nemo_writer import GPT_TARGET, amp_o2, llm_to_nemo, neva_to_nemo, stock_config, write_nemo
from sentencepiece_models import make_models

from videoneva.checkpoint.native import load_checkpoint
from videoneva.checkpoint.nemo import import_nemo

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("sp"))


def neva_archive(tmp_path, sp, hf, cfg, weights, name="neva.nemo", **kw):
    model, files = sp_artifact(sp["neva"])
    cfg["tokenizer"]["model"] = model
    return write_nemo(tmp_path / name, cfg, weights, files, **kw)


@pytest.mark.parametrize("layout", ["tp2", "tp2pp2-folder"])
def test_stock_neva_legacy_shards(tmp_path, sp, layout):
    """neva_config.yaml as shipped (legacy, fast-swiglu: fused dense_h_to_4h, megatron_amp_O2), finetuned LLM."""
    ref = reference(adapter="linear")
    hf = ref.state_dict()
    cfg = stock_config(False, SIZES, **{"mm_cfg.llm.freeze": False, "tensor_model_parallel_size": 2,
                                        "mm_cfg.vision_encoder.from_pretrained": clip_dir(ref, tmp_path / "clip")})
    split = layout == "tp2pp2-folder"
    if split:  # the unfused `swiglu`: gate and up in dense_h_to_4h / dense_h_to_4h_2
        cfg.update(activation="swiglu", pipeline_model_parallel_size=2)
    weights = amp_o2({**llm_to_nemo(hf, 4, 4, mcore=False, split_glu=split), **neva_to_nemo(hf, False, "linear", False)})
    path = neva_archive(tmp_path, sp, hf, cfg, weights, "neva" if split else "neva.nemo", tp=2, pp=2 if split else 1)
    imported = import_nemo(path)
    assert imported.settings["conv_template"] == "llama_2" and imported.settings["image_mean"] == MEAN
    assert imported.config.text_config.vocab_size == 512 and len(imported.tokenizer) == 428
    assert_logits(ref, imported)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("backend", ["torch_dist", "zarr"])
def test_stock_video_neva_distributed_checkpoint(tmp_path, sp, backend):
    """video_neva_config.yaml as shipped (mcore, nvgpt LLM: layernorm1p, squared-relu, rotary 0.5, 8→2 KV groups)."""
    ref = reference("nemotron", kv=2, bf16=backend == "zarr")
    hf = ref.state_dict()
    cfg = stock_config(True, {**SIZES, "num_query_groups": 2, "mm_cfg.vision_encoder.crop_size": [56, 56]},
                       **{"mm_cfg.llm.freeze": False, "mm_cfg.llm.model_type": "nvgpt", "mm_cfg.vision_encoder.freeze":
                          False, "mm_cfg.mm_mlp_adapter_type": "mlp2x_gelu", "tensor_model_parallel_size": 2,
                          "data.num_frames": FRAMES, "mm_cfg.vision_encoder.from_pretrained": "openai/clip-vit-large"})
    weights = dist_names({**llm_to_nemo(hf, 4, 2, mcore=True, family="nemotron"),
                          **neva_to_nemo(hf, True, "mlp2x_gelu", True)})
    if backend == "zarr":
        weights = {k: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) else v for k, v in weights.items()}
    writer = torch_dist_writer(2, glu_fused=False) if backend == "torch_dist" else zarr_writer(2, glu_fused=False)
    model, files = sp_artifact(sp["nvgpt"])
    cfg["tokenizer"].update(model=model, sentencepiece_legacy=None)
    path = write_nemo(tmp_path / "video.nemo", cfg, weights, files, dist=writer)
    other = reference("nemotron", kv=2, seed=7)  # the tower's weights must come from the archive, not this dir
    imported = import_nemo(path, vision_tower=clip_dir(other, tmp_path / "clip"))
    assert imported.config.text_config.model_type == "nemotron" and imported.settings["num_frames"] == FRAMES
    assert imported.settings["conv_template"] == "nvgpt"
    assert_logits(ref, imported)


def test_projector_only_neva_with_base_gpt_pads_the_vocabulary(tmp_path, sp):
    """The seed's first mode: the stock NeVA config (num_query_groups null) + a base GPT from the Llama converter
    (num_query_groups 4, a 420-token tokenizer); the NeVA tokenizer adds 8 tokens, NeMo zero-pads to 512 rows."""
    ref = reference(adapter="linear", zero_from=420)
    hf = ref.state_dict()
    base_llm = {k: (v[:420] if k.endswith(("embed_tokens.weight", "lm_head.weight")) else v) for k, v in hf.items()}
    base_model, base_files = sp_artifact(sp["llama_like"])
    base_cfg = {"target": GPT_TARGET, "mcore_gpt": True, "num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128,
                "num_attention_heads": 4, "num_query_groups": 4, "encoder_seq_length": 256,
                "max_position_embeddings": 256, "position_embedding_type": "rope", "normalization": "rmsnorm",
                "activation": "fast-swiglu", "bias": False, "layernorm_epsilon": 1e-5, "rotary_base": 10000,
                "share_embeddings_and_output_weights": False, "make_vocab_size_divisible_by": 4,
                "tokenizer": {"library": "sentencepiece", "model": base_model}}
    base = write_nemo(tmp_path / "gpt.nemo", base_cfg, llm_to_nemo(base_llm, 4, 4, mcore=True), base_files)
    cfg = stock_config(False, SIZES, **{"mm_cfg.llm.from_pretrained": str(base),
                                        "mm_cfg.vision_encoder.from_pretrained": clip_dir(ref, tmp_path / "clip")})
    neva = neva_archive(tmp_path, sp, hf, cfg, amp_o2(neva_to_nemo(hf, False, "linear", False)))
    imported = import_nemo(neva, base_model_file=base)
    assert imported.config.text_config.vocab_size == 512 and len(imported.tokenizer) == 428
    assert_logits(ref, imported)


def test_nemo_23_08_projector_names_and_zero_centered_gamma(tmp_path, sp):
    """mm_linear_adapter.linear (NeMo 23.08) and an mcore RMSNorm with layernorm_zero_centered_gamma (1 + w)."""
    ref = reference(adapter="linear")
    hf = ref.state_dict()
    stored = {k: (v - 1 if "norm" in k and k.endswith("weight") else v) for k, v in hf.items()}
    cfg = stock_config(False, SIZES, **{"mcore_gpt": True, "layernorm_zero_centered_gamma": True,
                                        "mm_cfg.llm.freeze": False, "mm_cfg.vision_encoder.from_pretrained":
                                        clip_dir(ref, tmp_path / "clip")})
    weights = {**llm_to_nemo(stored, 4, 4, mcore=True), **neva_to_nemo(stored, True, "linear", False, old_names=True)}
    assert_logits(ref, import_nemo(neva_archive(tmp_path, sp, hf, cfg, weights)))


def test_loaded_nemo_checkpoint_carries_tower_preprocessing_and_tokenizer(tmp_path, sp):
    ref = reference(adapter="linear")
    hf = ref.state_dict()
    cfg = stock_config(False, SIZES, **{"mm_cfg.llm.freeze": False, "mm_cfg.use_im_start_end": True,
                                        "mm_cfg.vision_encoder.from_pretrained": clip_dir(ref, tmp_path / "clip")})
    path = neva_archive(tmp_path, sp, hf, cfg, amp_o2({**llm_to_nemo(hf, 4, 4, mcore=False),
                                                        **neva_to_nemo(hf, False, "linear", False)}))
    ck = load_checkpoint(path)
    assert ck.settings.image_mean == tuple(MEAN) and ck.settings.image_std == tuple(STD)
    assert ck.settings.conv_template == "llama_2"
    spec = ck.tokenizer.init_kwargs["nemo_media"]
    assert spec["im_start_end"] and spec["id_remap"] == {"<extra_id_3>": 0, "<extra_id_6>": 1, "<extra_id_7>": 2}
