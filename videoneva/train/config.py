"""Keys of `videoneva train` (`videoneva train --help` renders them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from videoneva.config import DataConfig, _choice, _help, _positive
from videoneva.errors import ConfigError
from videoneva.model.factory import ModelSizes
from videoneva.train.vision_pretrain import VisionPretrainConfig

# Lightning's precision names; the bare forms mean what they mean in Lightning (and NeMo): "bf16" and
# "16" are mixed precision, "32" full float32.
PRECISION_ALIASES = {"32": "32-true", "32-true": "32-true", "fp32": "32-true", "bf16": "bf16-mixed",
                     "bf16-mixed": "bf16-mixed", "16": "16-mixed", "16-mixed": "16-mixed", "fp16": "16-mixed",
                     "bf16-true": "bf16-true", "16-true": "16-true"}
# dtype the weights are kept in: mixed precision keeps float32 weights and runs matmuls in 16 bits
PARAM_DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.float32, "16-mixed": torch.float32,
                "bf16-true": torch.bfloat16, "16-true": torch.float16}
STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")


def training_precision(value: Any) -> str:
    """trainer.precision as Lightning spells it: 32-true | bf16-mixed | 16-mixed | bf16-true | 16-true."""
    text = str(value).lower()
    if text not in PRECISION_ALIASES:
        raise ConfigError(f"trainer.precision={value!r} is not valid; choose one of "
                          "['32', 'bf16-mixed', '16-mixed', 'bf16-true', '16-true'] (bf16 = bf16-mixed, 16 = 16-mixed)")
    return PRECISION_ALIASES[text]


@dataclass
class TrainerKeys:
    """trainer.* of a training run: Lightning Fabric's arguments, as NeMo users type them."""

    precision: Any = _help("32 | bf16-mixed | 16-mixed | bf16-true | 16-true (bf16 = bf16-mixed, 16 = 16-mixed)",
                           default="32")
    devices: int = _help("processes per node: GPUs with accelerator=gpu, CPU processes with accelerator=cpu",
                         default=1)
    num_nodes: int = _help("machines; launch each node with torchrun (docs/training.md)", default=1)
    accelerator: str = _help("auto (cuda when there is one) | cpu | gpu | cuda", default="auto")
    strategy: str = _help("auto | ddp | fsdp (FSDP2: parameters, gradients and optimizer state sharded over the "
                          "processes) | deepspeed (refused: not supported)", default="auto")

    def __post_init__(self) -> None:
        self.precision = training_precision(self.precision)
        _choice("trainer.accelerator", self.accelerator, ("auto", "cpu", "gpu", "cuda"))
        _choice("trainer.strategy", self.strategy, STRATEGIES)
        _positive("trainer.devices", self.devices)
        _positive("trainer.num_nodes", self.num_nodes)

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


@dataclass
class LoraConfig:
    enable: bool = _help("train LoRA adapters on the LLM instead of its full weights", default=False)
    r: int = _help("LoRA rank", default=16)
    alpha: int = _help("LoRA alpha", default=32)
    dropout: float = _help("LoRA dropout", default=0.0)
    target_modules: list = _help("LLM modules to adapt", default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class OptimConfig:
    lr: float = _help("peak learning rate (AdamW)", default=1e-3)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    warmup_steps: int = _help("linear warm-up steps, then cosine decay to 10%", default=50)
    max_steps: int = _help("optimizer steps", default=1000)
    micro_batch_size: int = _help("examples per forward pass of one process", default=8)
    grad_accum: int = _help("micro-batches per optimizer step and process; global batch = micro_batch_size x "
                            "grad_accum x trainer.devices x trainer.num_nodes", default=1)
    grad_clip: float = _help("gradient-norm clip; 0 disables", default=1.0)
    freeze_vision: bool = _help("keep the vision tower frozen in the finetune stage", default=False)
    activation_checkpointing: bool = _help("recompute the LLM's and the vision tower's layer activations in the "
                                           "backward pass instead of keeping them (less memory, more compute)",
                                           default=False)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _positive("train.micro_batch_size", self.micro_batch_size)
        _positive("train.grad_accum", self.grad_accum)


@dataclass
class TrainDataConfig(DataConfig):
    data_path: Optional[str] = _help("LLaVA conversation json", default=None)
    cache_media: bool = _help("keep decoded frames in memory across epochs", default=True)
    eval_data_path: Optional[str] = _help("held-out LLaVA conversation json scored during training "
                                          "(teacher-forced exact match of the answers)", default=None)
    eval_max: int = _help("at most this many held-out records are scored", default=200)
    isolate_turns: bool = _help("in a multi-turn record each turn sees only the shared prefix (system, first "
                                "question, media) and itself, never an earlier answer; positions restart "
                                "after the prefix (one media pass trains several independent questions)",
                                default=False)


@dataclass
class NewModelConfig(ModelSizes):
    """Shapes of a model trained from scratch (when init is null); vocab_size is the BPE target."""

    tokenizer: Optional[str] = _help("tokenizer dir; null trains a byte-level BPE on the data", default=None)


def _small_model() -> NewModelConfig:
    return NewModelConfig(vocab_size=512, vision_hidden=128, vision_layers=2, vision_heads=4, vision_intermediate=256,
                          text_hidden=128, text_layers=2, text_heads=4, text_kv_heads=2, text_intermediate=256,
                          max_position_embeddings=2048)


@dataclass
class TrainConfig:
    stage: str = _help("pretrain (projector only) | finetune (LLM + projector [+ vision])", default="finetune")
    init: Optional[str] = _help("checkpoint to start from; null: a new model of model.* shapes", default=None)
    output_dir: Optional[str] = _help("where checkpoints go: last/ (resume) and final/; with several nodes a "
                                      "folder every node sees", default=None)
    resume: bool = _help("continue from output_dir/last (on the same or another number of processes)", default=False)
    seed: int = _help("seed for weights, data order and sampling", default=0)
    save_every: int = _help("save output_dir/last every N steps (0: only at the end)", default=200)
    log_every: int = _help("log loss every N steps", default=10)
    eval_every: int = _help("score data.eval_data_path every N steps (0: only at the end)", default=0)
    model_id: str = _help("model id recorded in the checkpoint", default="videoneva")
    trainer: TrainerKeys = field(default_factory=TrainerKeys)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    model: NewModelConfig = field(default_factory=_small_model)
    vision_pretrain: VisionPretrainConfig = field(default_factory=VisionPretrainConfig)

    def __post_init__(self) -> None:
        if self.stage not in ("pretrain", "finetune"):
            raise ConfigError(f"stage={self.stage!r} is not valid; choose one of ['pretrain', 'finetune']")
        if not self.output_dir:
            raise ConfigError("output_dir=DIR is required")
        if not self.data.data_path:
            raise ConfigError("data.data_path=FILE.json is required")
        if self.vision_pretrain.scenes and self.init:
            raise ConfigError("vision_pretrain.scenes pretrains the tower of a new model; init= already brings one "
                              "(set vision_pretrain.scenes=null, or init=null)")
