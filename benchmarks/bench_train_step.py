"""Training step time of the demo recipe: LM head on the answer positions only vs on every position.

`videoneva train` computes the loss with the LM head on the positions that predict an assistant
token (videoneva/train/step.py forward_loss); the model's own `labels=` path runs it on every
position. Both give the same loss (tests/train/test_train.py). This times one optimizer step
(forward, backward, AdamW) of each on the same batches of the demo recipe's data layout
(videoneva/demo/train_demo.yaml sizes, 9-question isolated multi-turn records), interleaved in
one run, and writes results/train_step.{json,md}.

    python benchmarks/bench_train_step.py [--scenes 64] [--reps 5] [--steps 8]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from videoneva.cli import main as cli
from videoneva.config import load_config
from videoneva.media.sources import MediaRoot
from videoneva.model.vision import VisionFeatures
from videoneva.train.build import build_model, prepare, train_media_settings
from videoneva.train.config import TrainConfig
from videoneva.train.data import ConversationDataset, collate, load_conversations
from videoneva.train.evaluate import embed_batch
from videoneva.train.step import attention_inputs, forward_loss

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "videoneva" / "demo" / "train_demo.yaml"


def full_logits_loss(model, vision, batch: dict) -> torch.Tensor:
    """The model's own labels= loss (LM head on every position), same masks as forward_loss."""
    embeds = embed_batch(model, vision, batch)
    return model(inputs_embeds=embeds, labels=batch["labels"], **attention_inputs(batch, embeds.dtype)).loss


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=64, help="demo-data scenes to build batches from")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each variant")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per repetition")
    ap.add_argument("--out", default=str(HERE / "results"), help="where train_step.{json,md} go")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        if cli(["demo-data", f"out={data}", f"n={a.scenes}", "seed=99", "heldout_fraction=0", "media_token=left",
                "multi_turn=true", "two_shape_fraction=0.6", "image_fraction=0.1", "questions_per_scene=9",
                "extra_types=motion,describe,shape"]) != 0:
            return 1
        cfg = load_config(TrainConfig, [f"config={RECIPE}", f"data.data_path={data / 'train.json'}",
                                          f"data.video_folder={data}", "data.eval_data_path=null",
                                          "vision_pretrain.scenes=null", f"output_dir={tmp}/run"])
        records = load_conversations(cfg.data.data_path)
        model, tok, settings = build_model(cfg, records)
        model, base = prepare(model, cfg)
        vision = VisionFeatures(base, settings.frame_token_pool)
        media = train_media_settings(settings, base)
        ds = ConversationDataset(records, tok, settings.conv_template, media, MediaRoot(data), vision.tokens, True)
        mbs = cfg.train.micro_batch_size
        batches = [collate([ds[i] for i in range(j, j + mbs)], tok.pad_token_id, True)
                   for j in range(0, len(ds) - mbs + 1, mbs)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    variants = {"answer_positions": forward_loss, "every_position": full_logits_loss}
    b0 = batches[0]
    same = abs(float(forward_loss(base, vision, b0)) - float(full_logits_loss(base, vision, b0)))

    def run(fn) -> float:
        t = time.perf_counter()
        for k in range(a.steps):
            opt.zero_grad(set_to_none=True)
            fn(base, vision, batches[k % len(batches)]).backward()
            opt.step()
        return (time.perf_counter() - t) / a.steps * 1000

    for fn in variants.values():
        run(fn)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.reps):
        for name, fn in variants.items():
            times[name].append(run(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["every_position"] / med["answer_positions"]
    tokens = statistics.mean(float(b["input_ids"].shape[1]) for b in batches)
    scored = statistics.mean(float((b["labels"][:, 1:] != -100).sum()) / b["labels"][:, 1:].numel() for b in batches)
    command = " ".join(["python benchmarks/bench_train_step.py", *argv])
    report = {"command": command, "batch": mbs, "mean_padded_length": round(tokens, 1),
              "scored_fraction": round(scored, 3), "loss_difference": same, "step_ms": times,
              "median_step_ms": {k: round(v, 1) for k, v in med.items()}, "speedup": round(ratio, 3),
              "threads": torch.get_num_threads()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(report, indent=1) + "\n")
    md = ["# Demo recipe training step: LM head on answer positions vs every position", "", f"`{command}`", "",
          f"Batch {mbs} records, mean padded length {tokens:.0f} tokens, {100 * scored:.1f}% of positions carry "
          f"loss; {torch.get_num_threads()} threads. Medians of {a.reps} interleaved repetitions of {a.steps} steps.",
          "", "| loss path | ms / step |", "|---|---|",
          *[f"| {k} | {v:.1f} |" for k, v in med.items()], "",
          f"every_position / answer_positions = **{ratio:.2f}x**; loss difference {same:.2e}.", ""]
    (out / "train_step.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
