"""Build a new (randomly initialised) Video NeVA model from sizes: tests, demo training, benchmarks."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration


@dataclass
class ModelSizes:
    """Shapes of a Video NeVA model (CLIP ViT tower + mlp2x_gelu projector + Llama LLM)."""

    vocab_size: int = 32000
    image_size: int = 224
    patch_size: int = 14
    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_intermediate: int = 4096
    text_hidden: int = 2048
    text_layers: int = 16
    text_heads: int = 16
    text_kv_heads: int = 16
    text_intermediate: int = 5632
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5


TINY = ModelSizes(
    vocab_size=512, image_size=224, patch_size=14, vision_hidden=32, vision_layers=2, vision_heads=2,
    vision_intermediate=64, text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2,
    text_intermediate=128, max_position_embeddings=8192,
)


def new_llava(
    sizes: ModelSizes,
    image_token_id: int,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    seed: int = 0,
) -> LlavaForConditionalGeneration:
    """A randomly initialised transformers Llava model in the Video NeVA layout.

    Vision features come from the penultimate CLIP layer with CLS dropped
    (vision_feature_layer=-2, strategy 'default'); the projector is Linear-GELU-Linear
    (NeVA's mlp2x_gelu).

    Args:
        sizes: model shapes.
        image_token_id: id of the media placeholder token in the tokenizer (< vocab_size).
        pad_token_id, bos_token_id, eos_token_id: tokenizer ids recorded in the text config.
        seed: torch seed for the random weights.
    """
    vision = CLIPVisionConfig(
        image_size=sizes.image_size, patch_size=sizes.patch_size, hidden_size=sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers, num_attention_heads=sizes.vision_heads,
        intermediate_size=sizes.vision_intermediate, projection_dim=sizes.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=sizes.vocab_size, hidden_size=sizes.text_hidden, num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads, num_key_value_heads=sizes.text_kv_heads,
        intermediate_size=sizes.text_intermediate, max_position_embeddings=sizes.max_position_embeddings,
        rms_norm_eps=sizes.rms_norm_eps, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        image_seq_length=(sizes.image_size // sizes.patch_size) ** 2, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2,
        multimodal_projector_bias=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.eval()
    return model
