"""NeMo `.nemo` import: a HuggingFace tokenizer inside the archive, and every key that changes the math and is
not computed refused by name; bad archives fail clearly. Archives are written by nemo_writer.py."""
from __future__ import annotations

import json
import tarfile

import pytest
import torch
from nemo_fixtures import SIZES, assert_logits, clip_dir, reference, sp_artifact
from nemo_writer import GPT_TARGET, amp_o2, llm_to_nemo, neva_to_nemo, stock_config, write_nemo
from sentencepiece_models import EXTRA_IDS, make_models
from transformers import AutoTokenizer

from videoneva.checkpoint.nemo import import_nemo
from videoneva.errors import CheckpointError

torch.set_num_threads(1)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|endoftext|>", *EXTRA_IDS]


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory) -> dict[str, bytes]:
    """GPT-2 style byte-level BPE files (vocab.json + merges.txt), as NeMo keeps a HF tokenizer's artifacts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["What color is the moving shape? A red circle on the left."] * 30, trainer)
    d = tmp_path_factory.mktemp("bpe")
    tok.model.save(str(d))
    return {"0a1b2c_vocab.json": (d / "vocab.json").read_bytes(), "0a1b2c_merges.txt": (d / "merges.txt").read_bytes()}


def hf_tokenizer_cfg() -> dict:
    return {"library": "huggingface", "type": "gpt2", "model": None, "use_fast": True,
            "vocab_file": "nemo:0a1b2c_vocab.json", "merge_file": "nemo:0a1b2c_merges.txt",
            "special_tokens": {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
            "additional_special_tokens": EXTRA_IDS}


def finetuned(tmp_path, sp, over: dict | None = None, mcore: bool = False, tower=None, weights=None,
              no_weights: bool = False, **kw):
    """A finetuned stock NeVA archive (LLM and projector inside) with config overrides."""
    ref = reference(adapter="linear")
    hf = ref.state_dict()
    model, files = sp_artifact(sp["neva"])
    cfg = stock_config(False, SIZES, **{"mm_cfg.llm.freeze": False, "mcore_gpt": mcore, "tokenizer.model": model,
                                        "mm_cfg.vision_encoder.from_pretrained": tower or clip_dir(ref, tmp_path / "c"),
                                        **(over or {})})
    if weights is None and not no_weights:
        weights = {**llm_to_nemo(hf, 4, 4, mcore=mcore), **neva_to_nemo(hf, mcore, "linear", False)}
    return ref, write_nemo(tmp_path / "neva.nemo", cfg, weights, files, **kw)


def test_huggingface_tokenizer_tied_embeddings(tmp_path, bpe_files):
    """library: huggingface with vocab/merges artifacts and NeMo's special tokens; share_embeddings_and_output_weights."""
    ref = reference(vocab=384, adapter="mlp2x_gelu")
    sd = ref.state_dict()
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"].clone()
    ref.load_state_dict(sd)
    cfg = stock_config(False, SIZES, **{"mm_cfg.llm.freeze": False, "mm_cfg.vision_encoder.freeze": False,
                                        "mm_cfg.mm_mlp_adapter_type": "mlp2x_gelu", "mm_cfg.llm.model_type": "nvgpt",
                                        "share_embeddings_and_output_weights": True, "tokenizer": hf_tokenizer_cfg(),
                                        "mm_cfg.vision_encoder.from_pretrained": clip_dir(ref, tmp_path / "c")})
    weights = amp_o2({**llm_to_nemo(sd, 4, 4, mcore=False, tied=True), **neva_to_nemo(sd, False, "mlp2x_gelu", True)})
    imported = import_nemo(write_nemo(tmp_path / "neva.nemo", cfg, weights, bpe_files))
    assert imported.config.tie_word_embeddings
    assert_logits(ref, imported)
    tok = imported.tokenizer  # NeMo's special tokens resolved to the ids already in vocab.json
    vocab = json.loads(bpe_files["0a1b2c_vocab.json"])
    assert tok.pad_token_id == vocab["<pad>"] and tok.eos_token_id == vocab["</s>"] and len(tok) == len(vocab)
    tok.save_pretrained(tmp_path / "tok_out")  # outlives the import's temporary directory
    again = AutoTokenizer.from_pretrained(tmp_path / "tok_out")
    assert again.init_kwargs["nemo_media"]["patch"] == "<extra_id_3>"
    text = "What color is the shape?<extra_id_1>"
    assert again(text)["input_ids"] == tok(text)["input_ids"]


def test_rotary_base_is_10000_in_legacy_neva_and_read_in_mcore(tmp_path, sp):
    _, legacy = finetuned(tmp_path / "a", sp, {"rotary_base": 500000})
    assert import_nemo(legacy).config.text_config.rope_parameters["rope_theta"] == 10000.0
    _, mcore = finetuned(tmp_path / "b", sp, {"rotary_base": 500000}, mcore=True)
    assert import_nemo(mcore).config.text_config.rope_parameters["rope_theta"] == 500000.0


REFUSED = [  # (config overrides, words the error must hold)
    ({"normalization": "layernorm", "activation": "gelu"}, ["normalization='layernorm'", "activation='gelu'"]),
    ({"activation": "squared-relu"}, ["activation='squared-relu'"]),
    ({"position_embedding_type": "learned_absolute"}, ["position_embedding_type='learned_absolute'"]),
    ({"bias": True}, ["bias=True"]),
    ({"transformer_block_type": "post_ln"}, ["transformer_block_type='post_ln'"]),
    ({"num_query_groups": 2}, ["num_query_groups=2 with mcore_gpt false"]),
    ({"rotary_percentage": 0.5}, ["rotary_percentage=0.5"]),
    ({"num_moe_experts": 8}, ["num_moe_experts=8"]),
    ({"window_size": [64, 0]}, ["window_size"]),
    ({"rotary_interleaved": True}, ["rotary_interleaved=True"]),
    ({"megatron_legacy": True}, ["megatron_legacy=True"]),
    ({"qk_layernorm": True}, ["qk_layernorm=True"]),
    ({"headscale": True}, ["headscale=True"]),
    ({"mm_cfg.vision_encoder.vision_select_feature": "cls_patch"}, ["vision_select_feature='cls_patch'"]),
    ({"mm_cfg.vision_encoder.class_token_length": 2}, ["class_token_length=2"]),
    ({"mm_cfg.vision_encoder.from_hf": False}, ["from_hf is false"]),
    ({"mm_cfg.vision_encoder.from_pretrained": "google/siglip-so400m-patch14-384"}, ["SigLIP"]),
    ({"mm_cfg.mm_mlp_adapter_type": "mlp_downsample"}, ["mm_mlp_adapter_type='mlp_downsample'"]),
    ({"mm_cfg.use_lita": True}, ["use_lita"]),
    ({"mm_cfg.vision_encoder.crop_size": [112, 112]}, ["mm_cfg.vision_encoder.crop_size 112"]),
    ({"tokenizer.library": "byte-level"}, ["tokenizer.library='byte-level'"]),
    ({"tokenizer.additional_special_tokens": EXTRA_IDS}, ["tokenizer.additional_special_tokens",
                                                          "sentencepiece_legacy is false"]),
    ({"mm_cfg.llm.model_type": "llama_3"}, ["<|reserved_special_token_4|>", "model_type='llama_3'"]),
    ({"target": "nemo.collections.nlp.models.language_modeling.megatron_t5_model.MegatronT5Model"},
     ["MegatronT5Model"]),
]


@pytest.mark.parametrize("over,words", REFUSED, ids=[next(iter(o)) for o, _ in REFUSED])
def test_each_unsupported_key_is_refused_by_name(tmp_path, sp, over, words):
    _, path = finetuned(tmp_path, sp, over)
    with pytest.raises(CheckpointError) as exc:
        import_nemo(path)
    assert all(w in str(exc.value) for w in words), str(exc.value)


def test_siglip_tower_directory_is_refused_by_name(tmp_path, sp):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=56, patch_size=14)).save_pretrained(
        tmp_path / "tower")
    _, path = finetuned(tmp_path, sp, tower=str(tmp_path / "tower"))
    with pytest.raises(CheckpointError, match="SiglipVisionModel.*not supported"):
        import_nemo(path)


def test_bad_archives_fail_clearly(tmp_path, sp):
    (tmp_path / "x.nemo").write_bytes(b"not a tar at all")
    with pytest.raises(CheckpointError, match="not a .nemo archive"):
        import_nemo(tmp_path / "x.nemo")
    no_cfg = write_nemo(tmp_path / "nocfg.nemo", None, {}, {})
    with pytest.raises(CheckpointError, match="no model_config.yaml"):
        import_nemo(no_cfg)
    gpt = write_nemo(tmp_path / "gpt.nemo", {"target": GPT_TARGET, **SIZES}, {}, {})
    with pytest.raises(CheckpointError, match="no mm_cfg"):
        import_nemo(gpt)


@pytest.mark.parametrize("key,cut", [("model.decoder.layers.1.self_attention.linear_qkv.weight", 0),
                                     ("model.embedding.word_embeddings.adapter_layer.mm_projector_adapter."
                                      "mm_projector.weight", 1)])
def test_wrong_shaped_tensor_is_named(tmp_path, sp, key, cut):
    ref = reference(adapter="linear")
    hf = ref.state_dict()
    weights = {**llm_to_nemo(hf, 4, 4, mcore=True), **neva_to_nemo(hf, True, "linear", False)}
    weights[key] = weights[key].narrow(cut, 0, weights[key].shape[cut] - 8)
    _, path = finetuned(tmp_path, sp, mcore=True, weights=weights)
    with pytest.raises(CheckpointError) as exc:
        import_nemo(path)
    msg = str(exc.value)
    assert key.removeprefix("model.") in msg and "expected" in msg and "shape" in msg


def test_frozen_tower_without_a_local_directory_asks_for_a_path(tmp_path, sp):
    _, path = finetuned(tmp_path, sp, tower="openai/clip-vit-large-patch14")
    with pytest.raises(CheckpointError, match="vision_tower=PATH"):
        import_nemo(path)


def test_unknown_distributed_backend(tmp_path, sp):
    import io

    _, path = finetuned(tmp_path, sp, no_weights=True)
    with tarfile.open(path, "a") as tar:
        data = json.dumps({"sharded_backend": "tensorstore_v9", "sharded_backend_version": 1}).encode()
        info = tarfile.TarInfo("./model_weights/metadata.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(CheckpointError, match="'tensorstore_v9' distributed checkpoint; readable"):
        import_nemo(path)
