"""The model a training run starts from: loaded or new, what trains for the stage, LoRA, checkpointing."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

from videoneva import prompts
from videoneva.checkpoint.native import CheckpointSettings, load_checkpoint
from videoneva.media.settings import MediaSettings
from videoneva.model.factory import ModelSizes, new_llava
from videoneva.train.config import PARAM_DTYPES, OptimConfig, TrainConfig

# load_checkpoint's precision for the dtype the weights train in
LOAD_PRECISION = {"32-true": "32", "bf16-mixed": "32", "16-mixed": "32", "bf16-true": "bf16", "16-true": "16"}


def train_tokenizer_for(cfg: TrainConfig, records: list[dict]):
    """The byte-level BPE a new model gets when model.tokenizer is null, trained on the records' text."""
    from videoneva.tokenizer import train_tokenizer

    template = cfg.data.conv_template or "nv_steerlm"
    texts = (prompts.render_conversation(template, r["conversations"], None)[0] for r in records)
    return train_tokenizer(texts, vocab_size=cfg.model.vocab_size, special_tokens=prompts.special_tokens(template))


def _new_model(cfg: TrainConfig, tok):
    template = cfg.data.conv_template or "nv_steerlm"
    m = cfg.model
    sizes = ModelSizes(**{f.name: getattr(m, f.name) for f in dataclasses.fields(ModelSizes)})
    sizes.vocab_size = len(tok)  # the trained tokenizer's real size (specials included)
    model = new_llava(sizes, image_token_id=tok.convert_tokens_to_ids(prompts.MEDIA_TOKENS["image"]),
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      seed=cfg.seed)
    settings = CheckpointSettings(conv_template=template, model_id=cfg.model_id)
    return model, tok, settings


def _settings_from(cfg: TrainConfig, base: CheckpointSettings) -> CheckpointSettings:
    d = cfg.data
    upd = {k: v for k, v in dict(conv_template=d.conv_template, media_type=d.media_type, num_frames=d.num_frames,
                                 splice_single_frame=d.splice_single_frame, image_aspect_ratio=d.image_aspect_ratio,
                                 frame_token_pool=d.frame_token_pool).items() if v is not None}
    source = {"kind": "videoneva train", "stage": cfg.stage, "init": cfg.init, "data_path": cfg.data.data_path,
              "media_root": cfg.data.video_folder or cfg.data.image_folder}
    return dataclasses.replace(base, model_id=cfg.model_id, source=source, **upd)


def build_model(cfg: TrainConfig, records: list[dict], tokenizer=None, tokenizer_dir: Optional[Path] = None):
    """(model, tokenizer, settings) as at the start of training.

    Args:
        cfg: the run's keys.
        records: the training records (a new model's tokenizer is trained on them).
        tokenizer: a new model's tokenizer, already trained (the processes of a run share one).
        tokenizer_dir: a saved tokenizer to reuse (resume).
    """
    if cfg.init:
        ck = load_checkpoint(cfg.init, precision=LOAD_PRECISION[cfg.trainer.precision])
        return ck.model, ck.tokenizer, _settings_from(cfg, ck.settings)
    source = tokenizer_dir or cfg.model.tokenizer
    if tokenizer is None and source:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(source))
    if tokenizer is None:
        tokenizer = train_tokenizer_for(cfg, records)
    model, tok, settings = _new_model(cfg, tokenizer)
    return model, tok, _settings_from(cfg, settings)


def tower_params_in_use(model) -> list:
    """The vision tower's parameters the features depend on: the layers up to the one the projector
    reads (vision_feature_layer), not those after it nor the pooled output's norm. The others never
    get a gradient; marked trainable they would stall DDP and FSDP waiting for one."""
    tower = getattr(model.model.vision_tower, "vision_model", model.model.vision_tower)  # transformers 4 nests it
    layers = tower.encoder.layers
    used = model.config.vision_feature_layer % (len(layers) + 1)  # hidden_states[i] is layer i's input
    skip = {id(p) for layer in layers[used:] for p in layer.parameters()}
    skip |= {id(p) for p in tower.post_layernorm.parameters()}
    return [p for p in model.model.vision_tower.parameters() if id(p) not in skip]


def set_trainable(model, cfg: TrainConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    if cfg.stage == "finetune":
        if not cfg.train.lora.enable:
            for p in [*model.model.language_model.parameters(), *model.lm_head.parameters()]:
                p.requires_grad_(True)
        if not cfg.train.freeze_vision:
            for p in tower_params_in_use(model):
                p.requires_grad_(True)


def checkpointing(model, on: bool) -> None:
    """Activation checkpointing (non-reentrant) of every layer of the LLM and of the vision tower, or off."""
    if not hasattr(model, "activation_checkpointing_enable"):  # the name before transformers 5.x
        if on:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
    elif on:
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()


def prepare(model, cfg: TrainConfig):
    """Weights in the training dtype, what trains for the stage, activation checkpointing, LoRA
    adapters on the LLM when asked. Returns (model, base): base is the Llava model, model the peft
    wrapper around it with LoRA, else base itself."""
    model.to(PARAM_DTYPES[cfg.trainer.precision]).train()
    set_trainable(model, cfg)
    if cfg.train.activation_checkpointing:
        checkpointing(model, True)
    if not (cfg.train.lora.enable and cfg.stage == "finetune"):
        return model, model
    from peft import LoraConfig as PeftLora, get_peft_model

    t = cfg.train.lora
    pattern = r".*language_model.*\.(" + "|".join(t.target_modules) + r")$"
    wrapped = get_peft_model(model, PeftLora(r=t.r, lora_alpha=t.alpha, lora_dropout=t.dropout, target_modules=pattern))
    set_trainable(wrapped.base_model.model, cfg)  # peft froze everything but the adapters
    for name, p in wrapped.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    return wrapped, wrapped.base_model.model


def lr_lambda(cfg: OptimConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def train_media_settings(settings: CheckpointSettings, model) -> MediaSettings:
    """The media preprocessing training uses: the checkpoint's settings at the tower's input size."""
    return MediaSettings.from_checkpoint(settings, model.config.vision_config.image_size)
