"""`videoneva train key=value…`: finetune (or train from scratch) a Video NeVA model on PyTorch.

Stages: "pretrain" trains the projector only; "finetune" trains the LLM and projector (the vision
tower too unless train.freeze_vision=true; LoRA on the LLM with train.lora.enable=true). The loss
covers assistant turns only (per template). Saves the native checkpoint format; `resume=true`
continues from output_dir/last (weights, optimizer, scheduler, data position, RNG).

A new model (init=null) can first have its vision tower pretrained on the dense labels of
`videoneva demo-data` scenes (vision_pretrain.scenes=…/scenes.jsonl; see
videoneva/demo/vision_pretrain.py): how the embedded demo model gets a tower that sees shapes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from videoneva import prompts
from videoneva.checkpoint.native import DTYPES, SETTINGS_FILE, CheckpointSettings, load_checkpoint, save_checkpoint
from videoneva.config import DataConfig, TrainerConfig, _help, config_help, load_config
from videoneva.demo.vision_pretrain import VisionPretrainConfig, pretrain_tower
from videoneva.errors import ConfigError
from videoneva.media.settings import MediaSettings
from videoneva.media.sources import MediaRoot
from videoneva.model.factory import ModelSizes, new_llava
from videoneva.model.vision import VisionFeatures
from videoneva.train.data import IGNORE_INDEX, ConversationDataset, collate, load_conversations
from videoneva.train.evaluate import embed_batch, exact_match

log = logging.getLogger(__name__)


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
    micro_batch_size: int = _help("examples per forward pass", default=8)
    grad_accum: int = _help("micro-batches per optimizer step", default=1)
    grad_clip: float = _help("gradient-norm clip; 0 disables", default=1.0)
    freeze_vision: bool = _help("keep the vision tower frozen in the finetune stage", default=False)
    lora: LoraConfig = field(default_factory=LoraConfig)


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
    output_dir: Optional[str] = _help("where checkpoints go: step_N/, last/ (resume) and final/", default=None)
    resume: bool = _help("continue from output_dir/last", default=False)
    seed: int = _help("seed for weights, data order and sampling", default=0)
    save_every: int = _help("save output_dir/last every N steps (0: only at the end)", default=200)
    log_every: int = _help("log loss every N steps", default=10)
    eval_every: int = _help("score data.eval_data_path every N steps (0: only at the end)", default=0)
    model_id: str = _help("model id recorded in the checkpoint", default="videoneva")
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
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


def _new_model(cfg: TrainConfig, records: list[dict]):
    from videoneva.tokenizer import train_tokenizer

    template = cfg.data.conv_template or "nv_steerlm"
    if cfg.model.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.model.tokenizer)
    else:
        texts = (prompts.render_conversation(template, r["conversations"], None)[0] for r in records)
        tok = train_tokenizer(texts, vocab_size=cfg.model.vocab_size, special_tokens=prompts.special_tokens(template))
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


def _set_trainable(model, cfg: TrainConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)
    if cfg.stage == "finetune":
        if not cfg.train.lora.enable:
            for p in [*model.model.language_model.parameters(), *model.lm_head.parameters()]:
                p.requires_grad_(True)
        if not cfg.train.freeze_vision:
            for p in model.model.vision_tower.parameters():
                p.requires_grad_(True)


def _lr_lambda(cfg: OptimConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def attention_inputs(batch: dict, dtype: torch.dtype) -> dict:
    """The LLM's attention kwargs for a collated batch: the 2D padding mask, or with isolated turns
    the 4D additive turn mask (eager and sdpa alike) and the restarted position ids."""
    if batch.get("turn_mask") is None:
        return {"attention_mask": batch["attention_mask"]}
    mask = torch.zeros(batch["turn_mask"].shape, dtype=dtype)
    mask.masked_fill_(~batch["turn_mask"], torch.finfo(dtype).min)
    return {"attention_mask": mask, "position_ids": batch["position_ids"]}


def forward_loss(model, vision: VisionFeatures, batch: dict) -> torch.Tensor:
    """Cross-entropy on assistant tokens, media rows scattered where the image tokens stand.

    The same mean next-token loss as the model's own `labels=` path, but the LM head runs on the
    positions that predict an assistant token only (a fraction of the sequence: the media and the
    questions carry no loss), which saves its matmul and softmax everywhere else.
    """
    embeds = embed_batch(model, vision, batch)
    hidden = model.model(inputs_embeds=embeds, **attention_inputs(batch, embeds.dtype)).last_hidden_state  # (B, L, D)
    target = batch["labels"][:, 1:]
    scored = target != IGNORE_INDEX  # position t predicts token t+1
    logits = model.lm_head(hidden[:, :-1][scored])  # (N, V)
    return F.cross_entropy(logits.float(), target[scored])


def _batches(ds, cfg: TrainConfig, start_example: int, pad_id: int):
    """Deterministic shuffled order per epoch (seed + epoch), resumable at an example offset."""
    mbs, n, epoch = cfg.train.micro_batch_size, len(ds), start_example // len(ds)
    pos = start_example % n
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        while pos + mbs <= n:
            yield collate([ds[i] for i in order[pos: pos + mbs]], pad_id, cfg.data.isolate_turns)
            pos += mbs
        epoch, pos = epoch + 1, 0


def _build(cfg: TrainConfig, records: list[dict], tokenizer_dir: Optional[Path] = None):
    """(model, tokenizer, settings) as at the start of training; tokenizer_dir reuses a saved tokenizer."""
    if cfg.init:
        ck = load_checkpoint(cfg.init)
        return ck.model, ck.tokenizer, _settings_from(cfg, ck.settings)
    if tokenizer_dir is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tokenizer=str(tokenizer_dir)))
    model, tok, settings = _new_model(cfg, records)
    return model, tok, _settings_from(cfg, settings)


def _prepare(model, cfg: TrainConfig):
    """Set what trains for the stage; wrap the LLM with LoRA adapters when asked. Returns (model, base)."""
    model.to(DTYPES[cfg.trainer.precision]).train()
    _set_trainable(model, cfg)
    if not (cfg.train.lora.enable and cfg.stage == "finetune"):
        return model, model
    from peft import LoraConfig as PeftLora, get_peft_model

    t = cfg.train.lora
    pattern = r".*language_model.*\.(" + "|".join(t.target_modules) + r")$"
    wrapped = get_peft_model(model, PeftLora(r=t.r, lora_alpha=t.alpha, lora_dropout=t.dropout, target_modules=pattern))
    _set_trainable(wrapped.base_model.model, cfg)  # peft froze everything but the adapters
    for name, p in wrapped.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    return wrapped, wrapped.base_model.model


def _save_last(model, tok, settings, last: Path, opt, sched, step: int, losses: list, cfg: TrainConfig) -> None:
    """Everything resume needs: weights (adapters included), tokenizer, settings, optimizer, data position."""
    last.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(last)
    (last / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings), indent=2))
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "step": step, "losses": losses, "rng": torch.get_rng_state(), "config": dataclasses.asdict(cfg)},
               last / "trainer_state.pt")


def train_media_settings(settings: CheckpointSettings, model) -> MediaSettings:
    """The media preprocessing training uses: the checkpoint's settings at the tower's input size."""
    return MediaSettings.from_checkpoint(settings, model.config.vision_config.image_size)


def _pretrain_vision(cfg: TrainConfig, base, media: MediaSettings, ds: ConversationDataset, out_dir: Path) -> dict:
    """The tower pretraining of a new model (vision_pretrain.*); leaves what trains, and train/eval mode, as it was."""
    vp, tower = cfg.vision_pretrain, base.model.vision_tower
    flags = {p: p.requires_grad for p in base.parameters()}
    was_training = tower.training
    sched = _lr_lambda(dataclasses.replace(cfg.train, warmup_steps=vp.warmup_steps, max_steps=vp.steps))
    report = pretrain_tower(tower, base.config.vision_feature_layer, vp, media, ds.pixels, sched, cfg.seed)
    for p, flag in flags.items():
        p.requires_grad_(flag)
    tower.train(was_training)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vision_pretrain.json").write_text(json.dumps(report, indent=1))
    if "heldout" in report:
        h = report["heldout"]
        log.info("vision_pretrain: held-out shape %.3f colour %.3f (%d objects)", h["shape_accuracy"],
                 h["color_accuracy"], h["objects"])
    return report


def train(cfg: TrainConfig) -> dict:
    """Run training; returns a summary (losses, steps, paths)."""
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)
    records = load_conversations(cfg.data.data_path)
    last = out_dir / "last"
    state = None
    if cfg.resume:
        if not (last / "trainer_state.pt").is_file():
            raise ConfigError(f"resume=true but {last}/trainer_state.pt does not exist")
        state = torch.load(last / "trainer_state.pt", weights_only=False)
        model, tok, settings = _build(cfg, records, tokenizer_dir=last)
    else:
        model, tok, settings = _build(cfg, records)
    model, base = _prepare(model, cfg)
    if state is not None:
        model.load_state_dict(state["model"])
    vision = VisionFeatures(base, settings.frame_token_pool)
    media = train_media_settings(settings, base)
    root = MediaRoot(cfg.data.video_folder or cfg.data.image_folder or Path(cfg.data.data_path).parent)
    ds = ConversationDataset(records, tok, settings.conv_template, media, root, vision.tokens, cfg.data.cache_media)
    val = None
    if cfg.data.eval_data_path:
        held = load_conversations(cfg.data.eval_data_path)[: cfg.data.eval_max]
        val = ConversationDataset(held, tok, settings.conv_template, media, root, vision.tokens, cfg.data.cache_media)
    pre = None
    if state is None and cfg.vision_pretrain.scenes:
        pre = _pretrain_vision(cfg, base, media, ds, out_dir)
        settings.source["vision_pretrain"] = {k: pre[k] for k in ("scenes", "steps", "heldout") if k in pre}
    evals: list[dict] = []

    def score(at: int) -> None:
        right = exact_match(base, vision, val, tok.pad_token_id or 0)
        evals.append({"step": at, "exact_match": sum(right) / len(right), "n": len(right)})
        log.info("step %d held-out exact match %.3f (%d records)", at, evals[-1]["exact_match"], len(right))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.train))
    step, losses = 0, []
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, losses = state["step"], list(state["losses"])
        torch.set_rng_state(state["rng"])
        # The saved lr belongs to the old schedule; a resume may extend max_steps, so recompute it.
        for group, base_lr in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = base_lr * _lr_lambda(cfg.train)(step)
    per_step = cfg.train.micro_batch_size * cfg.train.grad_accum
    batches = _batches(ds, cfg, step * per_step, tok.pad_token_id or 0)
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc=f"train[{cfg.stage}]", file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    while step < cfg.train.max_steps:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.train.grad_accum):
            loss = forward_loss(base, vision, next(batches)) / cfg.train.grad_accum
            loss.backward()
            total += float(loss.detach())
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        sched.step()
        step += 1
        losses.append(total)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if cfg.log_every and step % cfg.log_every == 0:
            log.info("step %d loss %.4f", step, total)
        if val is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.train.max_steps):
            score(step)
            bar.write(f"step {step}: held-out exact match {evals[-1]['exact_match']:.3f} (n={evals[-1]['n']})")
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.train.max_steps:
            _save_last(model, tok, settings, last, opt, sched, step, losses, cfg)
    bar.close()
    final = out_dir / "final"
    model.eval()
    to_save = model.merge_and_unload() if model is not base else model
    save_checkpoint(to_save, tok, settings, final)
    summary = {"steps": step, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "seconds": time.perf_counter() - t0, "final": str(final), "eval": evals,
               "vision_pretrain": None if pre is None else {k: v for k, v in pre.items() if k != "losses"},
               "config": dataclasses.asdict(cfg)}
    (out_dir / "train_summary.json").write_text(json.dumps({**summary, "losses": losses}, indent=1))
    return summary


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(config_help(TrainConfig, "videoneva train data.data_path=train.json output_dir=DIR [key=value …]"))
        return 0
    cfg: TrainConfig = load_config(TrainConfig, argv)
    s = train(cfg)
    print(f"train: {s['steps']} steps, loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}, "
          f"{s['seconds']:.0f} s; checkpoint in {s['final']}", file=sys.stderr)
    return 0
