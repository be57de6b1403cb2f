"""GPU check: every GPU path of videoneva that runs on this machine, checked against the CPU fp32 answers.

    python benchmarks/gpu_check.py [--n 20] [--out benchmarks/results]      (or: make gpu-check)

On the shipped demo model and fresh demo-data questions (greedy answers):
  reference_cpu_fp32  `videoneva infer` on the CPU in fp32: the answers everything else is compared with
  checkpoint_cuda_*   the same on CUDA in fp32 and bf16 (share of identical answers, time per answer)
  numerics_cuda       vision features and LLM logits of one video, CUDA fp32 / bf16 vs CPU fp32
  engine_cuda         `videoneva build` (ONNX vision + torch LLM), then `infer engine_dir=… device=cuda`
  train_step_cuda     the training loss of one batch on CUDA vs CPU, then optimizer steps on CUDA
  train_smoke_cuda    `videoneva train` (Lightning Fabric, bf16-mixed, activation checkpointing) for a
                      few steps on one GPU: finite, falling losses and the peak memory (videoneva.train.gpu_smoke)
  tensorrt / tensorrt_llm / dali   where those libraries import: the engine directory with the TensorRT
                      vision plan / the TensorRT-LLM engine, and DALI's NVDEC decode vs decord, each timed
                      side by side with the portable path
  gpu_tests           `pytest -m gpu tests` (every test that needs CUDA; the library-specific ones skip
                      with their reason when the library is missing)
Needs only torch with CUDA besides videoneva's own dependencies; without CUDA every GPU section is
skipped with its reason. Writes gpu_check.json and gpu_check.md to --out; exit status 1 if a check failed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from videoneva.cli import main as cli
from videoneva.demo.run import DEMO_INSERT, DEMO_MODEL

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MIN_AGREE_FP32 = 0.95  # identical greedy answers, CUDA fp32 vs CPU fp32 (reduction order differs)
MIN_AGREE_HALF = 0.80  # bf16 / fp16 rounding flips some greedy choices of a small model
DEVICE = "cuda"        # --device cpu runs the GPU sections on the CPU: a test of this script itself


def cuda_reason():
    if DEVICE == "cpu":
        return None
    try:
        return None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)"
    except RuntimeError as exc:
        return f"CUDA is unusable: {exc}"


def module_reason(name: str):
    if importlib.util.find_spec(name.split(".")[0]) is None:
        return f"{name} is not installed"
    try:
        __import__(name)
    except Exception as exc:  # installed but broken
        return f"{name} does not import: {type(exc).__name__}: {exc}"
    return cuda_reason()


class Check:
    def __init__(self, work: Path, n: int):
        self.work, self.n, self.results, self.answers = work, n, {}, {}

    def run(self, name: str, fn, reason=None) -> None:
        t0 = time.perf_counter()
        if reason:
            self.results[name] = {"status": "skipped", "reason": reason}
        else:
            try:
                details = fn() or {}
                ok = details.pop("ok", True)
                self.results[name] = {"status": "ok" if ok else "failed", **details}
            except Exception as exc:
                self.results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()[-3000:]}
        self.results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"gpu_check: {name}: {self.results[name]['status']} {self.results[name].get('reason', '')}",
              file=sys.stderr, flush=True)

    # -- answers -----------------------------------------------------------------------------------------
    def infer(self, key: str, model_arg: str, *extra: str) -> dict:
        out = self.work / f"{key}.jsonl"
        t0 = time.perf_counter()
        rc = cli(["infer", model_arg, f"prompt_file={self.work / 'data' / 'heldout_prompts.jsonl'}",
                  f"output_file={out}", f"inference.media_base_path={self.work / 'data'}", "inference.greedy=true",
                  "inference.tokens_to_generate=24", f"inference.insert_media_token={DEMO_INSERT}",
                  "print_answers=false", "overwrite=true", *extra])
        seconds = time.perf_counter() - t0
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        self.answers[key] = {r["question_id"]: r.get("raw_response") for r in recs if "error" not in r}
        errors = [r["error"] for r in recs if "error" in r]
        return {"rc": rc, "answers": len(self.answers[key]), "errors": errors[:3],
                "seconds_per_answer": round(seconds / max(1, len(recs)), 4)}

    def compare(self, key: str, details: dict, minimum: float) -> dict:
        ref, got = self.answers["reference_cpu_fp32"], self.answers[key]
        same = sum(got.get(q) == a for q, a in ref.items()) / max(1, len(ref))
        base = self.results["reference_cpu_fp32"]["seconds_per_answer"]
        details.update(agreement=round(same, 4), min_agreement=minimum,
                       speedup_vs_cpu=round(base / max(details["seconds_per_answer"], 1e-9), 2))
        details["ok"] = details["rc"] in (0, 1) and not details["errors"] and same >= minimum
        return details


def data(c: Check) -> dict:
    assert cli(["demo-data", f"out={c.work / 'data'}", f"n={c.n}", "seed=4242", "heldout_fraction=1.0",
                f"media_token={DEMO_INSERT}"]) == 0
    return {"questions": len((c.work / "data" / "heldout_prompts.jsonl").read_text().splitlines())}


def numerics(c: Check) -> dict:
    from videoneva.config import InferConfig, load_config
    from videoneva.runtime.loader import build_pipeline
    from videoneva.runtime.pipeline import Request

    first = json.loads((c.work / "data" / "heldout_prompts.jsonl").read_text().splitlines()[0])
    req = Request(first["text"], "video", first["video"])
    out = {}
    ref = None
    for device, precision in (("cpu", "32"), (DEVICE, "32"), (DEVICE, "bf16")):
        pipe = build_pipeline(load_config(InferConfig, [f"neva_model_file={DEMO_MODEL}", f"device={device}",
                                                        f"trainer.precision={precision}",
                                                        f"inference.media_base_path={c.work / 'data'}",
                                                        f"inference.insert_media_token={DEMO_INSERT}"]))
        feats = torch.as_tensor(pipe.flow.features(req).table)
        ids = pipe.front.prompt_ids(req, feats.shape[0])[1]
        now = (feats.float().cpu(), pipe.llm.logits(ids, feats).float().cpu())
        if ref is None:
            ref = now
            continue
        cos = [torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item() for a, b in zip(now, ref)]
        out[f"gpu_{precision}"] = {"features_max_abs_diff": (now[0] - ref[0]).abs().max().item(),
                                        "logits_max_abs_diff": (now[1] - ref[1]).abs().max().item(),
                                        "features_cosine": cos[0], "logits_cosine": cos[1],
                                        "same_next_token": bool((now[1][-1].argmax() == ref[1][-1].argmax()).item())}
    out["ok"] = out["gpu_32"]["logits_cosine"] > 0.9999 and out["gpu_bf16"]["logits_cosine"] > 0.99
    return out


def engine(c: Check, key: str, *build: str, precision: str = "32", minimum: float = MIN_AGREE_FP32) -> dict:
    out = c.work / key
    t0 = time.perf_counter()
    assert cli(["build", f"checkpoint={DEMO_MODEL}", f"output={out}", "overwrite=true", "max_batch_size=1",
                f"trainer.precision={precision}", *build]) == 0
    built = round(time.perf_counter() - t0, 1)
    manifest = json.loads((out / "manifest.json").read_text())
    details = c.infer(key, f"engine_dir={out}", f"device={DEVICE}", f"trainer.precision={precision}")
    details.update(build_seconds=built, skipped_steps=sorted(manifest["skipped"]), gpu=manifest.get("gpu"))
    return c.compare(key, details, minimum)


def train_step(c: Check) -> dict:
    from videoneva.config import load_config
    from videoneva.media.sources import MediaRoot
    from videoneva.model.vision import VisionFeatures
    from videoneva.train.build import build_model, prepare, train_media_settings
    from videoneva.train.config import TrainConfig
    from videoneva.train.data import ConversationDataset, collate, load_conversations
    from videoneva.train.step import forward_loss

    cfg = load_config(TrainConfig, [f"config={ROOT / 'videoneva' / 'demo' / 'train_demo.yaml'}",
                                      f"init={DEMO_MODEL}", f"data.data_path={c.work / 'data' / 'heldout.json'}",
                                      f"data.video_folder={c.work / 'data'}", "data.eval_data_path=null",
                                      "vision_pretrain.scenes=null", f"output_dir={c.work / 'train'}"])
    records = load_conversations(cfg.data.data_path)
    model, tok, settings = build_model(cfg, records)
    model, base = prepare(model, cfg)
    vision = VisionFeatures(base, settings.frame_token_pool)
    media = train_media_settings(settings, base)
    ds = ConversationDataset(records, tok, settings.conv_template, media, MediaRoot(c.work / "data"), vision.tokens, True)
    batch = collate([ds[i] for i in range(min(8, len(ds)))], tok.pad_token_id, cfg.data.isolate_turns)
    cpu_loss = float(forward_loss(base, vision, batch))
    base.to(DEVICE)
    on_gpu = {k: (v.to(DEVICE) if torch.is_tensor(v) else v) for k, v in batch.items()}
    cuda_loss = float(forward_loss(base, vision, on_gpu))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    losses, t0 = [], time.perf_counter()
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(base, vision, on_gpu)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    rel = abs(cuda_loss - cpu_loss) / max(abs(cpu_loss), 1e-9)
    return {"cpu_loss": cpu_loss, "cuda_loss": cuda_loss, "relative_difference": rel, "step_losses": losses,
            "seconds_per_step": round((time.perf_counter() - t0) / 3, 4),
            "ok": rel < 1e-3 and all(map(lambda x: x == x and abs(x) < 1e4, losses))}


def dali_decode(c: Check) -> dict:
    from videoneva.media import load_media
    from videoneva.media.settings import MediaSettings
    from videoneva.media.sources import MediaRoot

    first = json.loads((c.work / "data" / "heldout_prompts.jsonl").read_text().splitlines()[0])["video"]
    root, out, frames = MediaRoot(c.work / "data"), {}, {}
    for decoder in ("decord", "dali", "decord", "dali"):  # alternating; the second round is timed
        t0 = time.perf_counter()
        sample = load_media(root, first, MediaSettings(media_type="video", num_frames=8, decoder=decoder))
        out[f"{decoder}_seconds"] = round(time.perf_counter() - t0, 4)
        frames[decoder] = torch.as_tensor(sample.pixel_values)
    diff = (frames["dali"] - frames["decord"]).abs().mean().item()
    return {**out, "mean_abs_pixel_diff": diff, "ok": diff < 0.05}


def train_smoke(c: Check) -> dict:
    from videoneva.train.smoke import gpu_smoke, train_smoke as smoke

    r = gpu_smoke(str(c.work / "smoke")) if DEVICE == "cuda" else smoke("cpu", str(c.work / "smoke"))
    return {**r, "ok": r["finite"] and r["loss_went_down"]}


def gpu_tests(c: Check) -> dict:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider", "tests"],
                          cwd=ROOT, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-25:]
    return {"rc": proc.returncode, "summary": tail[-1] if tail else "", "tail": tail, "ok": proc.returncode in (0, 5)}


def write(results: dict, env: dict, command: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "environment": env, "checks": results}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    md = ["# GPU check", "", f"`{command}`", "", f"Machine: {env['gpu'] or 'no CUDA device'}; torch {env['torch']}, "
          f"Python {env['python']}. Seconds per answer include loading the model; agreement is the share of "
          "answers identical to the CPU fp32 ones.", "", "| check | status | result | s |", "|---|---|---|---|"]
    keys = ("agreement", "speedup_vs_cpu", "seconds_per_answer", "relative_difference", "summary", "reason", "error")
    for name, r in results.items():
        shown = "; ".join(f"{k}={r[k]}" for k in keys if k in r)
        md.append(f"| {name} | {r['status']} | {shown.replace('|', '/')} | {r['seconds']} |")
    (out / "gpu_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="demo-data scenes (5 questions each)")
    ap.add_argument("--out", default=str(HERE / "results"), help="where gpu_check.{json,md} go")
    ap.add_argument("--skip-tests", action="store_true", help="leave out `pytest -m gpu`")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: run the GPU sections on the CPU (tests this script where there is no GPU)")
    a = ap.parse_args(argv)
    global DEVICE
    DEVICE = a.device
    no_cuda = cuda_reason()
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": DEVICE, "gpu": None if no_cuda or DEVICE == "cpu" else f"{torch.cuda.get_device_name(0)} (sm {'.'.join(map(str, torch.cuda.get_device_capability(0)))})",
           "libraries": {m: module_reason(m) or "ok" for m in ("tensorrt", "tensorrt_llm", "nvidia.dali")}}
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        c = Check(Path(tmp), a.n)
        c.run("data", lambda: data(c))
        c.run("reference_cpu_fp32", lambda: c.infer("reference_cpu_fp32", f"neva_model_file={DEMO_MODEL}", "device=cpu"))
        for precision, minimum in (("32", MIN_AGREE_FP32), ("bf16", MIN_AGREE_HALF)):
            key = f"checkpoint_cuda_{'fp32' if precision == '32' else precision}"
            c.run(key, lambda k=key, p=precision, m=minimum: c.compare(
                k, c.infer(k, f"neva_model_file={DEMO_MODEL}", f"device={DEVICE}", f"trainer.precision={p}"), m),
                no_cuda)
        c.run("numerics_cuda", lambda: numerics(c), no_cuda)
        c.run("engine_cuda", lambda: engine(c, "engine_cuda"), no_cuda)
        c.run("train_step_cuda", lambda: train_step(c), no_cuda)
        c.run("train_smoke_cuda", lambda: train_smoke(c), no_cuda)
        c.run("tensorrt", lambda: engine(c, "tensorrt", "vision.backend=tensorrt"), module_reason("tensorrt"))
        trtllm = module_reason("tensorrt_llm")
        c.run("tensorrt_llm", lambda: engine(c, "tensorrt_llm", "vision.backend=tensorrt", "llm.backend=tensorrt_llm",
                                             precision="16", minimum=MIN_AGREE_HALF), trtllm)
        c.run("dali", lambda: dali_decode(c), module_reason("nvidia.dali") or (
            "NVDEC decode needs --device cuda" if DEVICE == "cpu" else None))
        c.run("gpu_tests", lambda: gpu_tests(c), no_cuda or ("left out (--skip-tests)" if a.skip_tests else None))
    write(c.results, env, " ".join(["python benchmarks/gpu_check.py", *map(shlex.quote, argv)]), Path(a.out))
    if DEVICE == "cpu":
        print("gpu_check: --device cpu ran the GPU sections on the CPU: a test of this script, not a GPU result",
              file=sys.stderr)
    return 1 if any(r["status"] == "failed" for r in c.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
