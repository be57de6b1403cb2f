"""NeMo `.nemo` import: archives written here in NeMo's layout import to identical logits; bad ones fail clearly.

The writer below is the inverse of the importer, written from NeMo's facts (nemo_keys.py): Megatron's
per-query-group qkv interleave, fused SwiGLU fc1 [gate; up], mm_projector adapter names, the vision
tower under the word-embedding module, tokenizer files as `nemo:<hash>_<name>` artifacts, and the
archive forms NeMo writes (model_weights.ckpt, mp_rank_XX/, a torch_dist model_weights/ directory).
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer, CLIPVisionModel, LlavaForConditionalGeneration

from videoneva.checkpoint.nemo import import_nemo
from videoneva.errors import CheckpointError
from videoneva.model.factory import TINY, new_llava

torch.set_num_threads(1)

SIZES = replace(TINY, image_size=56, vocab_size=384)  # 4×4 = 16 tokens per frame; vocab padded like NeMo's
FRAMES = 2
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|endoftext|>", "<image>", "<video>"]
SPECIALS += [f"<extra_id_{i}>" for i in range(8)]
GPT_TARGET = "nemo.collections.nlp.models.language_modeling.megatron_gpt_model.MegatronGPTModel"
NEVA_TARGET = "nemo.collections.multimodal.models.multimodal_llm.neva.neva_model.MegatronNevaModel"
PROJ = "model.embedding.word_embeddings.adapter_layer.mm_projector_adapter.mm_projector."
VISION = "model.embedding.word_embeddings.vision_encoder.vision_model."


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """GPT-2 style byte-level BPE files (vocab.json + merges.txt), as NeMo keeps a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["What color is the moving shape? A red circle on the left."] * 30, trainer)
    d = tmp_path_factory.mktemp("tok")
    tok.model.save(str(d))
    return d


@pytest.fixture(scope="module")
def image_id(tok_dir) -> int:
    return json.loads((tok_dir / "vocab.json").read_text())["<image>"]


@pytest.fixture(scope="module")
def model(image_id):
    return new_llava(SIZES, image_token_id=image_id, seed=1)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, model) -> Path:
    """A local HF CLIP directory holding the model's own vision tower."""
    return save_clip(model, tmp_path_factory.mktemp("clip"))


def save_clip(model, out: Path, seed: int | None = None) -> Path:
    clip = CLIPVisionModel(model.config.vision_config)
    if seed is None:
        clip.load_state_dict({k[len("model.vision_tower."):]: v for k, v in model.state_dict().items()
                              if k.startswith("model.vision_tower.")})
    else:
        torch.manual_seed(seed)
        for p in clip.parameters():
            torch.nn.init.normal_(p)
    clip.save_pretrained(out)
    return out


# ---------------------------------------------------------------- NeMo-layout writer (the inverse map)

def llm_to_nemo(model, tied: bool = False) -> dict[str, torch.Tensor]:
    """transformers Llama weights → Megatron mcore GPT names and fused layouts."""
    sd, tc = model.state_dict(), model.config.text_config
    heads, groups, dim, hidden = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim, tc.hidden_size
    out = {"model.embedding.word_embeddings.weight": sd["model.language_model.embed_tokens.weight"],
           "model.decoder.final_layernorm.weight": sd["model.language_model.norm.weight"]}
    if not tied:
        out["model.output_layer.weight"] = sd["lm_head.weight"]
    for i in range(tc.num_hidden_layers):
        h, n = f"model.language_model.layers.{i}.", f"model.decoder.layers.{i}."
        q = sd[h + "self_attn.q_proj.weight"].reshape(groups, heads // groups, dim, hidden)
        k = sd[h + "self_attn.k_proj.weight"].reshape(groups, 1, dim, hidden)
        v = sd[h + "self_attn.v_proj.weight"].reshape(groups, 1, dim, hidden)
        out[n + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, hidden)
        out[n + "self_attention.linear_qkv.layer_norm_weight"] = sd[h + "input_layernorm.weight"]
        out[n + "self_attention.linear_proj.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[n + "mlp.linear_fc1.weight"] = torch.cat([sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]])
        out[n + "mlp.linear_fc1.layer_norm_weight"] = sd[h + "post_attention_layernorm.weight"]
        out[n + "mlp.linear_fc2.weight"] = sd[h + "mlp.down_proj.weight"]
    return out


def projector_to_nemo(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    return {PROJ + f"{i}.{p}": sd[f"model.multi_modal_projector.linear_{j}.{p}"]
            for i, j in ((0, 1), (2, 2)) for p in ("weight", "bias")}


def vision_to_nemo(model) -> dict[str, torch.Tensor]:
    """As NeMo saves a trained HF CLIPVisionModel (transformers 4.x names: vision_model.*)."""
    return {VISION + k[len("model.vision_tower."):]: v for k, v in model.state_dict().items()
            if k.startswith("model.vision_tower.")}


def split_tp(sd: dict, tp: int) -> list[dict]:
    """Megatron tensor-parallel shards: column-parallel on dim 0, row-parallel on dim 1, fc1 as [gate_r; up_r]."""
    shards = [{} for _ in range(tp)]
    for k, v in sd.items():
        if k.endswith(("linear_qkv.weight", "query_key_value.weight", "word_embeddings.weight",
                       "output_layer.weight", "dense_h_to_4h.weight", "dense_h_to_4h_2.weight")):
            parts = v.chunk(tp, 0)
        elif k.endswith("linear_fc1.weight"):
            gate, up = v.chunk(2)
            parts = [torch.cat([g, u]) for g, u in zip(gate.chunk(tp), up.chunk(tp))]
        elif k.endswith(("linear_proj.weight", "linear_fc2.weight", "self_attention.dense.weight",
                         "dense_4h_to_h.weight")):
            parts = v.chunk(tp, 1)
        else:
            parts = [v] * tp
        for shard, p in zip(shards, parts):
            shard[k] = p.clone()
    for shard in shards:  # Transformer Engine keeps FP8 state as io.BytesIO next to the weights
        shard["model.decoder.layers.0.self_attention.core_attention._extra_state"] = io.BytesIO(b"te")
    return shards


LEGACY = [("model.embedding.", "model.language_model.embedding."),  # mcore → pre-mcore NeMo GPT names
          ("model.decoder.final_layernorm.", "model.language_model.encoder.final_layernorm."),
          ("model.output_layer.", "model.language_model.output_layer."),
          ("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight"),
          ("self_attention.linear_qkv.", "self_attention.query_key_value."),
          ("self_attention.linear_proj.", "self_attention.dense."),
          ("mlp.linear_fc1.layer_norm_weight", "post_attention_layernorm.weight"),
          ("mlp.linear_fc2.", "mlp.dense_4h_to_h."), ("model.decoder.layers.", "model.language_model.encoder.layers.")]


def to_legacy(sd: dict) -> dict:
    """Pre-mcore names; SwiGLU fc1 as two tensors, dense_h_to_4h (gate) and dense_h_to_4h_2 (up)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("mlp.linear_fc1.weight"):
            stem = k.replace("model.decoder.layers.", "model.language_model.encoder.layers.")
            gate, up = v.chunk(2)
            out[stem.replace("linear_fc1", "dense_h_to_4h")] = gate
            out[stem.replace("linear_fc1", "dense_h_to_4h_2")] = up
            continue
        for a, b in LEGACY:
            k = k.replace(a, b)
        out[k] = v
    return out


def split_pp(sd: dict, stages: int, layers: int) -> list[dict]:
    """Pipeline stages: local layer numbering, embedding on the first stage, head on the last."""
    per, out = layers // stages, [{} for _ in range(stages)]
    for k, v in sd.items():
        m = re.search(r"layers\.(\d+)\.", k)
        if m:
            i = int(m[1])
            out[i // per][k.replace(f"layers.{i}.", f"layers.{i % per}.")] = v
        else:
            out[-1 if ("output_layer" in k or "final_layernorm" in k) else 0][k] = v
    return out


def tokenizer_cfg() -> dict:
    return {"library": "huggingface", "type": "gpt2", "model": None, "use_fast": True,
            "vocab_file": "nemo:0a1b2c_vocab.json", "merge_file": "nemo:0a1b2c_merges.txt",
            "special_tokens": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
            "additional_special_tokens": [f"<extra_id_{i}>" for i in range(8)]}


def gpt_config(tied: bool = False, **over) -> dict:
    tc = SIZES
    cfg = {"target": GPT_TARGET, "mcore_gpt": True, "precision": "bf16", "tensor_model_parallel_size": 1,
           "pipeline_model_parallel_size": 1, "encoder_seq_length": tc.max_position_embeddings,
           "max_position_embeddings": tc.max_position_embeddings, "num_layers": tc.text_layers,
           "hidden_size": tc.text_hidden, "ffn_hidden_size": tc.text_intermediate,
           "num_attention_heads": tc.text_heads, "num_query_groups": tc.text_kv_heads, "kv_channels": None,
           "layernorm_epsilon": tc.rms_norm_eps, "normalization": "rmsnorm", "activation": "fast-swiglu",
           "position_embedding_type": "rope", "rotary_percentage": 1.0, "rotary_base": 10000, "bias": False,
           "share_embeddings_and_output_weights": tied, "make_vocab_size_divisible_by": 128,
           "tokenizer": tokenizer_cfg()}
    cfg.update(over)
    return cfg


def neva_config(vision_from: str = "openai/clip-vit-large-patch14", adapter: str = "mlp2x_gelu",
                llm_freeze: bool = False, vision_freeze: bool = True, **over) -> dict:
    cfg = gpt_config(target=NEVA_TARGET)
    cfg["mm_cfg"] = {
        "llm": {"from_pretrained": "/nemo/models/base_gpt.nemo", "freeze": llm_freeze, "model_type": "nvgpt"},
        "vision_encoder": {"from_pretrained": vision_from, "from_hf": True, "patch_dim": 14, "crop_size": [56, 56],
                           "hidden_size": SIZES.vision_hidden, "vision_select_layer": -2, "class_token_length": 1,
                           "freeze": vision_freeze},
        "mm_mlp_adapter_type": adapter, "use_im_start_end": False}
    cfg["data"] = {"media_type": "video", "num_frames": FRAMES, "splice_single_frame": None,
                   "conv_template": "nvgpt", "image_aspect_ratio": "square", "image_token_len": 16}
    cfg.update(over)
    return cfg


def write_nemo(path: Path, cfg: dict | None, weights, tok_dir: Path | None, layout: str = "single",
               gz: bool = False) -> Path:
    """Write a .nemo the way NLPSaveRestoreConnector does: tar of a folder, arcname '.'."""
    folder = path.parent / (path.name + ".d")
    folder.mkdir(parents=True)
    if cfg is not None:
        (folder / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    if tok_dir is not None:
        (folder / "0a1b2c_vocab.json").write_bytes((tok_dir / "vocab.json").read_bytes())
        (folder / "0a1b2c_merges.txt").write_bytes((tok_dir / "merges.txt").read_bytes())
    if layout == "single":
        torch.save(weights, folder / "model_weights.ckpt")
    elif layout in ("tp2", "tp4"):
        for rank, shard in enumerate(split_tp(weights, int(layout[2:]))):
            (folder / f"mp_rank_{rank:02d}").mkdir()
            torch.save(shard, folder / f"mp_rank_{rank:02d}" / "model_weights.ckpt")
    elif layout == "dist":
        write_torch_dist(weights, folder / "model_weights")
    elif layout == "tp2pp2":
        for pp, stage in enumerate(split_pp(weights, 2, SIZES.text_layers)):
            for tp, shard in enumerate(split_tp(stage, 2)):
                (folder / f"tp_rank_{tp:02d}_pp_rank_{pp:03d}").mkdir()
                torch.save(shard, folder / f"tp_rank_{tp:02d}_pp_rank_{pp:03d}" / "model_weights.ckpt")
    if path.suffix != ".nemo":  # an extracted .nemo folder
        folder.rename(path)
        return path
    with tarfile.open(path, "w:gz" if gz else "w:") as tar:
        tar.add(folder, arcname=".")
    return path


def write_torch_dist(weights: dict, out: Path) -> None:
    """megatron-core torch_dist layout: one DCP tensor per key, layers stacked on a leading axis."""
    import torch.distributed.checkpoint as dcp

    sd, stacked = {}, {}
    for k, v in weights.items():
        if k.startswith("model.decoder.layers."):
            i, rest = k[len("model.decoder.layers."):].split(".", 1)
            stacked.setdefault("model.decoder.layers." + rest, {})[int(i)] = v
        else:
            sd[k] = v
    for k, per_layer in stacked.items():
        sd[k] = torch.stack([per_layer[i] for i in sorted(per_layer)])
    sd["model.decoder.layers.self_attention.core_attention._extra_state/shard_0_2"] = io.BytesIO(b"te")
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(out)), no_dist=True)
    (out / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                                                   "common_backend": "torch", "common_backend_version": 1}))
    torch.save({}, out / "common.pt")


# ---------------------------------------------------------------- checks

def inputs(image_id: int):
    g = torch.Generator().manual_seed(0)
    text = torch.randint(20, 250, (1, 7), generator=g)
    ids = torch.cat([text[:, :4], torch.full((1, FRAMES * 16), image_id), text[:, 4:]], dim=1)
    return ids, torch.randn(FRAMES, 3, SIZES.image_size, SIZES.image_size, generator=g)


def assert_same_logits(reference, imported, image_id: int) -> None:
    model = LlavaForConditionalGeneration(imported.config)
    model.load_state_dict(imported.state_dict, strict=True)
    model.eval()
    ids, pixels = inputs(image_id)
    with torch.no_grad():
        want = reference(input_ids=ids, pixel_values=pixels).logits
        got = model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("layout,gz", [("single", True), ("tp2", False), ("dist", False)])
def test_finetuned_nemo_imports_to_identical_logits(tmp_path, model, image_id, tok_dir, clip_dir, layout, gz):
    weights = {**llm_to_nemo(model), **projector_to_nemo(model)}
    if layout == "single":  # tower trained → saved in the archive; from_pretrained's weights must not be used
        weights.update(vision_to_nemo(model))
        cfg = neva_config(vision_from=str(save_clip(model, tmp_path / "other_clip", seed=7)), vision_freeze=False)
    else:
        cfg = neva_config(vision_from=str(clip_dir))
    nemo = write_nemo(tmp_path / "neva.nemo", cfg, weights, tok_dir, layout, gz)
    imported = import_nemo(nemo)
    assert imported.config.image_token_id == image_id and imported.config.text_config.vocab_size == SIZES.vocab_size
    assert imported.settings["num_frames"] == FRAMES and imported.settings["conv_template"] == "nvgpt"
    assert imported.settings["media_type"] == "video" and imported.settings["projector"] == "mlp2x_gelu"
    assert_same_logits(model, imported, image_id)

    tok = imported.tokenizer  # NeMo's special tokens resolved to the ids already in vocab.json
    vocab = json.loads((tok_dir / "vocab.json").read_text())
    assert tok.pad_token_id == vocab["<pad>"] and tok.eos_token_id == vocab["</s>"] and len(tok) == len(vocab)
    tok.save_pretrained(tmp_path / "tok_out")  # outlives the import's temporary directory
    again = AutoTokenizer.from_pretrained(tmp_path / "tok_out")
    text = "What color is the shape?<extra_id_1>"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert tok.convert_tokens_to_ids("<extra_id_1>") == vocab["<extra_id_1>"]


def test_legacy_names_tp2_pp2_extracted_folder(tmp_path, model, image_id, tok_dir, clip_dir):
    """Pre-mcore key names, tensor × pipeline shards (tp_rank_XX_pp_rank_YYY), read from an extracted folder."""
    weights = to_legacy({**llm_to_nemo(model), **projector_to_nemo(model)})
    assert "model.language_model.encoder.layers.1.mlp.dense_h_to_4h_2.weight" in weights
    cfg = neva_config(vision_from=str(clip_dir), mcore_gpt=False, tensor_model_parallel_size=2,
                      pipeline_model_parallel_size=2)
    folder = write_nemo(tmp_path / "neva_extracted", cfg, weights, tok_dir, layout="tp2pp2")
    assert (folder / "tp_rank_01_pp_rank_001" / "model_weights.ckpt").is_file()
    assert_same_logits(model, import_nemo(folder), image_id)


def test_projector_only_neva_plus_base_gpt(tmp_path, model, image_id, tok_dir, clip_dir):
    neva = write_nemo(tmp_path / "neva.nemo", neva_config(llm_freeze=True), projector_to_nemo(model), tok_dir)
    base = write_nemo(tmp_path / "gpt.nemo", gpt_config(), llm_to_nemo(model), tok_dir, layout="tp2")
    with pytest.raises(CheckpointError, match="base_model_file=PATH"):
        import_nemo(neva, vision_tower=clip_dir)
    imported = import_nemo(neva, base_model_file=base, vision_tower=clip_dir)
    assert str(base) in imported.source
    assert_same_logits(model, imported, image_id)


def test_tied_embeddings_and_linear_projector(tmp_path, image_id, tok_dir, clip_dir):
    """share_embeddings_and_output_weights (no output_layer) and NeMo's one-Linear projector, both exact."""
    reference = new_llava(SIZES, image_token_id=image_id, seed=2)
    reference.config.projector_hidden_act = "linear"
    reference = LlavaForConditionalGeneration(reference.config)
    sd = reference.state_dict()
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"].clone()
    sd["model.multi_modal_projector.linear_2.weight"] = torch.eye(SIZES.text_hidden)
    sd["model.multi_modal_projector.linear_2.bias"] = torch.zeros(SIZES.text_hidden)
    reference.load_state_dict(sd)
    reference.eval()
    weights = {**llm_to_nemo(reference, tied=True), **vision_to_nemo(reference),
               PROJ + "weight": sd["model.multi_modal_projector.linear_1.weight"],
               PROJ + "bias": sd["model.multi_modal_projector.linear_1.bias"]}
    cfg = neva_config(adapter="linear", vision_freeze=False, share_embeddings_and_output_weights=True)
    imported = import_nemo(write_nemo(tmp_path / "neva.nemo", cfg, weights, tok_dir), vision_tower=clip_dir)
    assert imported.config.tie_word_embeddings and imported.config.projector_hidden_act == "linear"
    assert_same_logits(reference, imported, image_id)


def test_native_loader_reads_nemo(tmp_path, model, image_id, tok_dir, clip_dir):
    from videoneva.checkpoint.native import load_checkpoint

    weights = {**llm_to_nemo(model), **projector_to_nemo(model)}
    nemo = write_nemo(tmp_path / "neva.nemo", neva_config(vision_from=str(clip_dir)), weights, tok_dir)
    ck = load_checkpoint(nemo)
    assert ck.kind == "nemo" and ck.settings.num_frames == FRAMES and ck.settings.conv_template == "nvgpt"
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():  # the loaded model runs (no tensor left on the meta device)
        torch.testing.assert_close(ck.model(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- failures

def test_archive_without_model_config(tmp_path, model, tok_dir):
    nemo = write_nemo(tmp_path / "bad.nemo", None, llm_to_nemo(model), tok_dir)
    with pytest.raises(CheckpointError, match="no model_config.yaml"):
        import_nemo(nemo)


def test_not_a_tar(tmp_path):
    (tmp_path / "x.nemo").write_bytes(b"not a tar at all")
    with pytest.raises(CheckpointError, match="not a .nemo archive"):
        import_nemo(tmp_path / "x.nemo")


@pytest.mark.parametrize("key,cut", [("model.decoder.layers.1.self_attention.linear_qkv.weight", 0),
                                     (PROJ + "2.weight", 1)])
def test_wrong_shaped_tensor_is_named(tmp_path, model, tok_dir, clip_dir, key, cut):
    weights = {**llm_to_nemo(model), **projector_to_nemo(model)}
    weights[key] = weights[key].narrow(cut, 0, weights[key].shape[cut] - 8)
    nemo = write_nemo(tmp_path / "bad.nemo", neva_config(vision_from=str(clip_dir)), weights, tok_dir)
    with pytest.raises(CheckpointError) as exc:
        import_nemo(nemo)
    msg = str(exc.value)
    assert key.removeprefix("model.") in msg and "expected" in msg and "shape" in msg


@pytest.mark.parametrize("over,words", [
    ({"normalization": "layernorm1p", "activation": "squared-relu"}, ["normalization='layernorm1p'", "squared-relu"]),
    ({"target": "nemo.collections.nlp.models.language_modeling.megatron_t5_model.MegatronT5Model"},
     ["MegatronT5Model"]),
])
def test_unknown_architecture(tmp_path, model, tok_dir, clip_dir, over, words):
    cfg = neva_config(vision_from=str(clip_dir), **over)
    nemo = write_nemo(tmp_path / "bad.nemo", cfg, {**llm_to_nemo(model), **projector_to_nemo(model)}, tok_dir)
    with pytest.raises(CheckpointError, match="unknown architecture") as exc:
        import_nemo(nemo)
    assert all(w in str(exc.value) for w in words)


def test_gpt_archive_as_neva_and_unsupported_projector(tmp_path, model, tok_dir, clip_dir):
    gpt = write_nemo(tmp_path / "gpt.nemo", gpt_config(), llm_to_nemo(model), tok_dir)
    with pytest.raises(CheckpointError, match="no mm_cfg"):
        import_nemo(gpt)
    cfg = neva_config(vision_from=str(clip_dir), adapter="mlp_downsample")
    nemo = write_nemo(tmp_path / "ds.nemo", cfg, {**llm_to_nemo(model), **projector_to_nemo(model)}, tok_dir)
    with pytest.raises(CheckpointError, match="mlp_downsample"):
        import_nemo(nemo)


def test_missing_vision_tower_asks_for_a_path(tmp_path, model, tok_dir):
    nemo = write_nemo(tmp_path / "neva.nemo", neva_config(), {**llm_to_nemo(model), **projector_to_nemo(model)},
                      tok_dir)
    with pytest.raises(CheckpointError, match="vision_tower=PATH"):
        import_nemo(nemo)


def test_zarr_distributed_checkpoint_is_refused(tmp_path, model, tok_dir, clip_dir):
    nemo = write_nemo(tmp_path / "neva.nemo", neva_config(vision_from=str(clip_dir)), {}, tok_dir, layout="none")
    with tarfile.open(nemo, "a") as tar:
        data = json.dumps({"sharded_backend": "zarr", "sharded_backend_version": 1}).encode()
        info = tarfile.TarInfo("./model_weights/metadata.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(CheckpointError, match="'zarr'.*torch_dist"):
        import_nemo(nemo)


def test_sentencepiece_tokenizer_needs_the_package(tmp_path, model, tok_dir, clip_dir):
    try:
        import sentencepiece  # noqa: F401
        pytest.skip("sentencepiece is installed")
    except ImportError:
        pass
    cfg = neva_config(vision_from=str(clip_dir))
    cfg["tokenizer"] = {"library": "sentencepiece", "model": "nemo:0a1b2c_vocab.json"}
    nemo = write_nemo(tmp_path / "neva.nemo", cfg, {**llm_to_nemo(model), **projector_to_nemo(model)}, tok_dir)
    with pytest.raises(CheckpointError, match="pip install sentencepiece"):
        import_nemo(nemo)
