"""`videoneva train key=value…`: finetune (or train from scratch) a Video NeVA model on Lightning Fabric.

Stages: "pretrain" trains the projector only; "finetune" trains the LLM and projector (the vision
tower too unless train.freeze_vision=true; LoRA on the LLM with train.lora.enable=true). The loss
covers assistant turns only (per template). trainer.* choose the devices, processes, precision and
strategy (videoneva/train/engine.py); the global batch is train.micro_batch_size x train.grad_accum
x the number of processes, in one data order whatever that number (videoneva/train/order.py).
Saves the native checkpoint format; `resume=true` continues from output_dir/last (weights,
optimizer, scheduler, data position, random state), on the same or another number of processes.

A new model (init=null) can first have its vision tower pretrained on the dense labels of
`videoneva demo-data` scenes (vision_pretrain.scenes=…/scenes.jsonl; see
videoneva/train/vision_pretrain.py): how the embedded demo model gets a tower that sees shapes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from videoneva.checkpoint.native import save_checkpoint
from videoneva.config import config_help, load_config
from videoneva.errors import ConfigError
from videoneva.media.settings import MediaSettings
from videoneva.media.sources import MediaRoot
from videoneva.train.build import (build_model, checkpointing, lr_lambda, prepare, train_media_settings,
                                   train_tokenizer_for)
from videoneva.train.config import TrainConfig
from videoneva.train.data import ConversationDataset, collate, load_conversations
from videoneva.train.engine import check_run, launch, make_fabric, media_less
from videoneva.train.evaluate import exact_match_parallel
from videoneva.train.order import MicroBatchOrder, rank_micro_batches
from videoneva.train.state import STATE_FILE, load_last, save_last
from videoneva.train.step import TrainStep
from videoneva.train.vision_pretrain import pretrain_tower

log = logging.getLogger(__name__)


def _pretrain_vision(cfg: TrainConfig, base, media: MediaSettings, ds: ConversationDataset, out_dir: Path,
                     fabric) -> dict:
    """The tower pretraining of a new model (vision_pretrain.*); leaves what trains, and train/eval mode, as it was."""
    vp, tower = cfg.vision_pretrain, base.model.vision_tower
    flags = {p: p.requires_grad for p in base.parameters()}
    was_training = tower.training
    sched = lr_lambda(dataclasses.replace(cfg.train, warmup_steps=vp.warmup_steps, max_steps=vp.steps))
    report = pretrain_tower(tower, base.config.vision_feature_layer, vp, media, ds.pixels, sched, cfg.seed,
                            fabric=fabric, autocast=cfg.trainer.precision == "bf16-mixed")
    for p, flag in flags.items():
        p.requires_grad_(flag)
    tower.train(was_training)
    if fabric.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "vision_pretrain.json").write_text(json.dumps(report, indent=1))
        if "heldout" in report:
            h = report["heldout"]
            log.info("vision_pretrain: held-out shape %.3f colour %.3f (%d objects)", h["shape_accuracy"],
                     h["color_accuracy"], h["objects"])
    return report


def _model(cfg: TrainConfig, records: list[dict], fabric, last: Path):
    """build_model() in every process; a new tokenizer is trained once (process 0) and shared."""
    if cfg.resume:
        return build_model(cfg, records, tokenizer_dir=last)
    tok = None
    if not cfg.init and not cfg.model.tokenizer and fabric.world_size > 1:
        tok = fabric.broadcast(train_tokenizer_for(cfg, records) if fabric.is_global_zero else None)
    return build_model(cfg, records, tokenizer=tok)


def _export(cfg: TrainConfig, fabric, model, base, tok, settings, records: list[dict], last: Path, final: Path) -> None:
    """Process 0 writes output_dir/final (LoRA merged). Sharded weights are read back from last/, which
    holds them whole, into a model built afresh; the other strategies hold the whole model already."""
    if not fabric.is_global_zero:
        return
    if cfg.trainer.strategy == "fsdp":
        fresh, _, _ = build_model(cfg, records, tokenizer_dir=last)
        model, base = prepare(fresh, cfg)
        whole = torch.load(last / STATE_FILE, map_location="cpu", mmap=True, weights_only=True)["model"]
        TrainStep(model, base, settings.frame_token_pool).load_state_dict(whole)
    model.eval()
    if cfg.train.activation_checkpointing:
        checkpointing(base, False)
    save_checkpoint(model.merge_and_unload() if model is not base else model, tok, settings, final)


def train(cfg: TrainConfig) -> dict:
    """Run training (in every process of the run); returns a summary (losses, steps, paths)."""
    out_dir, last = Path(cfg.output_dir), Path(cfg.output_dir) / "last"
    records = load_conversations(cfg.data.data_path)
    held = load_conversations(cfg.data.eval_data_path)[: cfg.data.eval_max] if cfg.data.eval_data_path else []
    if cfg.resume and not (last / STATE_FILE).is_file():
        raise ConfigError(f"resume=true but {last}/{STATE_FILE} does not exist")
    accelerator = check_run(cfg, records, held)
    order = MicroBatchOrder(len(records), cfg.train.micro_batch_size, cfg.seed)
    fabric = make_fabric(cfg, accelerator, unused_parameters=bool(media_less(records)))
    launch(fabric)
    main = fabric.is_global_zero
    torch.manual_seed(cfg.seed)
    model, tok, settings = _model(cfg, records, fabric, last)
    model, base = prepare(model, cfg)
    media = train_media_settings(settings, base)
    root = MediaRoot(cfg.data.video_folder or cfg.data.image_folder or Path(cfg.data.data_path).parent)
    step_module = TrainStep(model, base, settings.frame_token_pool)
    tpf = step_module.vision.tokens
    ds = ConversationDataset(records, tok, settings.conv_template, media, root, tpf, cfg.data.cache_media)
    val = ConversationDataset(held, tok, settings.conv_template, media, root, tpf, cfg.data.cache_media) if held else None
    pre = None
    if not cfg.resume and cfg.vision_pretrain.scenes:
        pre = _pretrain_vision(cfg, base, media, ds, out_dir, fabric)
        settings.source["vision_pretrain"] = {k: pre[k] for k in ("scenes", "steps", "heldout") if k in pre}
    step_module = fabric.setup_module(step_module)
    opt = torch.optim.AdamW([p for p in step_module.parameters() if p.requires_grad], lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.train))
    opt = fabric.setup_optimizers(opt)
    step, losses, consumed = 0, [], 0
    if cfg.resume:
        rest = load_last(fabric, last, step_module, opt, sched, cfg.train.micro_batch_size)
        step, losses, consumed = rest["step"], list(rest["losses"]), rest["micro_batches"]
        # The saved lr belongs to the old schedule; a resume may extend max_steps, so recompute it.
        for group, base_lr in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = base_lr * lr_lambda(cfg.train)(step)
    evals: list[dict] = []
    accum, world, rank, pad = cfg.train.grad_accum, fabric.world_size, fabric.global_rank, tok.pad_token_id or 0
    bar = tqdm(total=cfg.train.max_steps, initial=step, desc=f"train[{cfg.stage}]", file=sys.stderr,
               dynamic_ncols=True, disable=not main)
    t0, tokens, first = time.perf_counter(), torch.zeros((), dtype=torch.long, device=fabric.device), step
    while step < cfg.train.max_steps:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for a, k in enumerate(rank_micro_batches(consumed, accum, world, rank)):
            batch = fabric.to_device(collate([ds[i] for i in order.micro_batch(k)], pad, cfg.data.isolate_turns))
            tokens += batch["attention_mask"].sum()
            with fabric.no_backward_sync(step_module, enabled=world > 1 and a < accum - 1):
                loss = step_module(batch) / accum
                fabric.backward(loss)
            total += float(loss.detach())
        consumed += accum * world
        if world > 1:  # the loss of the global batch: the mean over the processes
            total = float(fabric.all_reduce(torch.tensor(total, dtype=torch.float64, device=fabric.device)))
        if cfg.train.grad_clip > 0:
            fabric.clip_gradients(step_module, opt, max_norm=cfg.train.grad_clip, error_if_nonfinite=False)
        opt.step()
        sched.step()
        step += 1
        losses.append(total)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if main and cfg.log_every and step % cfg.log_every == 0:
            log.info("step %d loss %.4f", step, total)
        if val is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.train.max_steps):
            right = exact_match_parallel(fabric, step_module, val, pad)
            evals.append({"step": step, "exact_match": sum(right) / len(right), "n": len(right)})
            if main:
                bar.write(f"step {step}: held-out exact match {evals[-1]['exact_match']:.3f} (n={len(right)})")
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.train.max_steps:
            meta = {"step": step, "losses": losses, "micro_batches": consumed,
                    "micro_batch_size": cfg.train.micro_batch_size, "config": dataclasses.asdict(cfg)}
            save_last(fabric, last, step_module, opt, sched, tok, settings, meta)
    bar.close()
    seconds = time.perf_counter() - t0
    if world > 1:
        tokens = fabric.all_reduce(tokens, reduce_op="sum")
    final = out_dir / "final"
    _export(cfg, fabric, model, base, tok, settings, records, last, final)
    summary = {"steps": step, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "seconds": seconds, "final": str(final), "eval": evals, "processes": world, "device": str(fabric.device),
               "samples": (step - first) * accum * world * cfg.train.micro_batch_size, "tokens": int(tokens),
               "vision_pretrain": None if pre is None else {k: v for k, v in pre.items() if k != "losses"},
               "config": dataclasses.asdict(cfg)}
    if main:
        (out_dir / "train_summary.json").write_text(json.dumps({**summary, "losses": losses}, indent=1))
    return summary


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(config_help(TrainConfig, "videoneva train data.data_path=train.json output_dir=DIR [key=value …]"))
        return 0
    cfg: TrainConfig = load_config(TrainConfig, argv)
    s = train(cfg)
    if s["processes"] == 1 or torch.distributed.get_rank() == 0:
        print(f"train: {s['steps']} steps, loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}, "
              f"{s['seconds']:.0f} s; checkpoint in {s['final']}", file=sys.stderr)
    return 0
