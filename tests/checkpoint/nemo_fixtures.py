"""Shared pieces of the .nemo import tests: the reference transformers Llava, a local CLIP directory, the
SentencePiece artifact and the logits comparison."""
from __future__ import annotations

import hashlib

import torch
from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, NemotronConfig)

FRAMES, TOKENS = 2, 16  # 56 px / 14 px patches
SIZES = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
         "encoder_seq_length": 256, "mm_cfg.vision_encoder.hidden_size": 32,
         "mm_cfg.vision_encoder.crop_size": [56, 56]}
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.3, 0.4]


def reference(family: str = "llama", vocab: int = 512, kv: int = 4, adapter: str = "mlp2x_gelu", seed: int = 0,
              zero_from: int | None = None, bf16: bool = False) -> LlavaForConditionalGeneration:
    """A random transformers Llava with the fixture sizes; rows from zero_from on are zero (NeMo's padding)."""
    vision = CLIPVisionConfig(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, projection_dim=32)
    common = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv,
                  head_dim=16, intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=False)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    text = (NemotronConfig(hidden_act="relu2", norm_eps=1e-5, rope_parameters={**rope, "partial_rotary_factor": 0.5},
                           **common) if family == "nemotron"
            else LlamaConfig(rms_norm_eps=1e-5, rope_parameters=rope, **common))
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=3, image_seq_length=TOKENS,
                         projector_hidden_act="gelu" if adapter == "mlp2x_gelu" else "linear",
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         multimodal_projector_bias=True)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    sd = {k: (1 + 0.1 * torch.randn_like(v)) if "norm" in k and k.endswith("weight") else 0.05 * torch.randn_like(v)
          for k, v in model.state_dict().items()}
    if adapter == "linear":
        sd["model.multi_modal_projector.linear_2.weight"] = torch.eye(64)
        sd["model.multi_modal_projector.linear_2.bias"] = torch.zeros(64)
    if zero_from is not None:
        for k in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            sd[k][zero_from:] = 0
    if bf16:
        sd = {k: v.to(torch.bfloat16).float() for k, v in sd.items()}
    model.load_state_dict(sd)
    return model.eval()


def clip_dir(model, out):
    tower = CLIPVisionModel(model.config.vision_config)
    tower.load_state_dict({k[len("model.vision_tower."):]: v for k, v in model.state_dict().items()
                           if k.startswith("model.vision_tower.")})
    tower.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_mean=MEAN,
                       image_std=STD).save_pretrained(out)
    return str(out)


def sp_artifact(model_path) -> tuple[str, dict[str, bytes]]:
    data = model_path.read_bytes()
    name = hashlib.md5(data).hexdigest()[:12] + "_tokenizer.model"  # NeMo's artifact naming: <hash>_<file>
    return f"nemo:{name}", {name: data}


def assert_logits(reference_model, imported, atol=1e-5):
    model = LlavaForConditionalGeneration(imported.config)
    model.load_state_dict(imported.state_dict, strict=True)
    model.eval()
    image_id = imported.config.image_token_id
    reference_model.config.image_token_id = image_id
    g = torch.Generator().manual_seed(0)
    text = torch.randint(20, 400, (1, 9), generator=g)
    ids = torch.cat([text[:, :5], torch.full((1, FRAMES * TOKENS), image_id), text[:, 5:]], dim=1)
    pixels = torch.randn(FRAMES, 3, 56, 56, generator=g)
    with torch.no_grad():
        want = reference_model(input_ids=ids, pixel_values=pixels).logits
        got = model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


def stock_neva_archive(tmp_path, neva_sp_model, **over):
    """(reference Llava, path): neva_config.yaml as shipped (legacy llama_2, fused fast-swiglu, megatron_amp_O2),
    finetuned LLM, frozen tower in a local CLIP dir, the NeVA SentencePiece tokenizer (420 + 8 extra_ids,
    vocabulary padded to 512)."""
    from nemo_writer import amp_o2, llm_to_nemo, neva_to_nemo, stock_config, write_nemo

    ref = reference(adapter="linear")
    hf = ref.state_dict()
    model, files = sp_artifact(neva_sp_model)
    cfg = stock_config(False, SIZES, **{"mm_cfg.llm.freeze": False, "tokenizer.model": model,
                                        "mm_cfg.vision_encoder.from_pretrained": clip_dir(ref, tmp_path / "clip"),
                                        **over})
    weights = amp_o2({**llm_to_nemo(hf, 4, 4, mcore=False), **neva_to_nemo(hf, False, "linear", False)})
    return ref, write_nemo(tmp_path / "neva.nemo", cfg, weights, files)
