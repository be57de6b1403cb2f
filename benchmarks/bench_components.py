"""Component benchmarks against this machine's own limits, all measured in one run (CPU, fp32).

  peak       torch fp32 matmul (N³, best of reps) → GFLOP/s; memory read and copy bandwidth → GB/s
  vision     CLIP ViT-L/14 224 + mlp2x_gelu projector: torch vs ONNX Runtime (TensorRT when present),
             frames/s and achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) vs the matmul peak
  llm        a ~1B Llama-shaped LLM (2048 wide, 16 layers, 5632 MLP, 32k vocab): prefill tokens/s vs the
             matmul peak, decode tokens/s (KV cache, batch 1) vs the memory-bandwidth bound
             (bandwidth ÷ weight bytes read per token)
  profile    torch profiler: the top operators of one vision call and of one decode step
  decode     8 sampled frames vs the whole video with decord (H.264 720p); DALI (GPU NVDEC, or its CPU
             decoder on a VP9 copy) when present
  cache      feature cache hit vs miss in the in-process pipeline of the demo engine

Random weights: speed depends on shapes, not on weight values. Writes results/components.json and
results/components.md.

    python benchmarks/bench_components.py [--threads 2] [--frames 4] [--reps 3]
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import videoneva.media  # noqa: E402,F401  (PyAV before decord)
from videoneva.bench.report import CpuMeter, command_line, machine_info, now_iso  # noqa: E402
from videoneva.stats import Stats  # noqa: E402


def best_of(fn, reps: int, warmup: int = 1) -> list[float]:
    """Wall seconds of reps calls of fn after warmup untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def peaks(n: int, reps: int) -> dict:
    """Matmul GFLOP/s (fp32, n×n×n) and memory bandwidth (GB/s) measured here and now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    mm = best_of(lambda: torch.mm(a, b), reps)
    x = torch.empty(2**28 // 4 * 4, dtype=torch.float32).normal_()  # 1 GiB: far larger than any cache
    rd = best_of(lambda: x.sum(), reps)
    cp = best_of(lambda: x.clone(), reps)
    nbytes = x.numel() * 4
    del x
    return {"matmul_n": n, "matmul_gflops": 2 * n**3 / min(mm) / 1e9, "matmul_gflops_p50": 2 * n**3 / np.median(mm) / 1e9,
            "read_gbs": nbytes / min(rd) / 1e9, "copy_gbs": 2 * nbytes / min(cp) / 1e9,
            "bytes": nbytes, "method": "best of reps: torch.mm; x.sum() reads 1 GiB; x.clone() reads + writes it"}


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def top_ops(fn, k: int = 6) -> list[dict]:
    """The k operators with the most self CPU time in one call of fn (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 2),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in ev[:k]]


def vision(args, peak: dict) -> dict:
    """torch vs ONNX Runtime frames/s and achieved GFLOP/s on CLIP ViT-L/14 224 (+ projector)."""
    import onnxruntime as ort
    from bench_vision import clip_l14_sizes

    from engine_build.vision import VisionEncoderModule, export_vision_onnx
    from videoneva.model.factory import new_llava

    llava = new_llava(clip_l14_sizes(2048), image_token_id=3, seed=0)
    module = VisionEncoderModule(llava, 1).eval()
    x = torch.randn(args.frames, 3, 224, 224, generator=torch.Generator().manual_seed(0))  # (F, 3, H, W)
    with torch.inference_mode():
        flops_torch = count_flops(lambda: module(x))
        layers = next(m for n, m in llava.model.vision_tower.named_modules() if n.endswith("encoder.layers"))
        layer = layers[-1]
        h = torch.randn(args.frames, 257, 1024)  # (F, 1 + 256 patches, 1024)
        flops_layer = count_flops(lambda: layer(h, None))
    out = {"model": "CLIP ViT-L/14 224 px (24 layers, 1024 wide) + mlp2x_gelu 1024 -> 2048 -> 2048, random weights",
           "frames_per_call": args.frames, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="bench_components_") as tmp:
        path = Path(tmp) / "vision.onnx"
        info = export_vision_onnx(llava, path, 224, frame_token_pool=1, check_frames=(1,))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        calls = {"torch": lambda: module(x), "onnxruntime": lambda: sess.run(None, {"pixel_values": xn})}
        # the exporter drops the last CLIP layer (its output is unused: features come from the penultimate one)
        flops = {"torch": flops_torch, "onnxruntime": flops_torch - flops_layer}
        secs: dict[str, list[float]] = {b: [] for b in calls}
        with torch.inference_mode():
            for b in calls:
                calls[b]()  # warm-up
            for rep in range(args.reps):
                for b in (list(calls) if rep % 2 == 0 else list(calls)[::-1]):  # alternate the order
                    t = time.perf_counter()
                    calls[b]()
                    secs[b].append(time.perf_counter() - t)
            out["profile_torch"] = top_ops(lambda: module(x))
        for b, s in secs.items():
            gflops = flops[b] / min(s) / 1e9
            out["backends"][b] = {"frames_per_s": asdict(Stats.of([args.frames / t for t in s], "frames/s")),
                                  "gflop_per_call": flops[b] / 1e9, "achieved_gflops": gflops,
                                  "percent_of_matmul_peak": 100 * gflops / peak["matmul_gflops"]}
        out["backends"]["tensorrt"] = None
        out["tensorrt_missing"] = "TensorRT needs a CUDA GPU (not installable on this CPU machine)"
        out["onnx_max_abs_diff"] = info["max_abs_diff"]
        del sess
    del llava, module
    gc.collect()
    return out


def llm(args, peak: dict) -> dict:
    """Prefill and decode of a ~1B Llama: tokens/s vs the matmul peak and the memory-bandwidth bound."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from videoneva.model.factory import ModelSizes

    s = ModelSizes()
    cfg = LlamaConfig(vocab_size=s.vocab_size, hidden_size=s.text_hidden, num_hidden_layers=s.text_layers,
                      num_attention_heads=s.text_heads, num_key_value_heads=s.text_kv_heads,
                      intermediate_size=s.text_intermediate, max_position_embeddings=s.max_position_embeddings,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    embed = model.model.embed_tokens.weight.numel()
    # per decoded token every weight is read once, except the embedding table (one row)
    bytes_per_token = (params - embed + s.text_hidden) * 4
    bound = peak["read_gbs"] * 1e9 / bytes_per_token
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, s.vocab_size, (1, args.prefill_tokens), generator=g)  # (1, L)
    with torch.inference_mode():
        prefill_flops = count_flops(lambda: model(prompt))
        pre = best_of(lambda: model(prompt), args.llm_reps)

        def decode_steps() -> list[float]:
            cache = DynamicCache(config=cfg)
            out = model(prompt[:, :args.decode_context], past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)  # (1, 1)
            times = []
            for _ in range(args.decode_tokens):
                t = time.perf_counter()
                out = model(tok, past_key_values=out.past_key_values, use_cache=True)
                tok = out.logits[:, -1:].argmax(-1)
                times.append(time.perf_counter() - t)
            return times

        steps = []
        for _ in range(args.llm_reps):
            steps += decode_steps()[1:]  # the first step after prefill is the slowest; keep the steady state
        cache = DynamicCache(config=cfg)
        o = model(prompt[:, :args.decode_context], past_key_values=cache, use_cache=True)
        t1 = o.logits[:, -1:].argmax(-1)
        profile = top_ops(lambda: model(t1, past_key_values=o.past_key_values, use_cache=True))
    prefill_tps = args.prefill_tokens / min(pre)
    prefill_gflops = prefill_flops / min(pre) / 1e9
    decode_tps = 1.0 / float(np.median(steps))
    out = {"model": f"Llama {s.text_layers} layers, {s.text_hidden} wide, MLP {s.text_intermediate}, vocab {s.vocab_size}, "
                    f"fp32, random weights ({params / 1e9:.2f} B parameters)",
           "parameters": params, "weight_bytes_per_decoded_token": bytes_per_token,
           "prefill": {"tokens": args.prefill_tokens, "tokens_per_s": prefill_tps, "gflop": prefill_flops / 1e9,
                       "achieved_gflops": prefill_gflops,
                       "percent_of_matmul_peak": 100 * prefill_gflops / peak["matmul_gflops"],
                       "seconds": asdict(Stats.of(pre))},
           "decode": {"context": args.decode_context, "steps": len(steps), "tokens_per_s": decode_tps,
                      "tokens_per_s_best": 1.0 / min(steps), "seconds_per_token": asdict(Stats.of(steps)),
                      "bandwidth_bound_tokens_per_s": bound, "percent_of_bandwidth_bound": 100 * decode_tps / bound,
                      "achieved_weight_gbs": decode_tps * bytes_per_token / 1e9},
           "profile_decode_step": profile}
    del model
    gc.collect()
    return out


def decode(args) -> dict:
    """Sampled frames vs whole-video decode with decord (bench_decode's methods), plus DALI where it runs."""
    from bench_decode import cached_video, time_methods

    from videoneva.media.dali import cuda_device_count, dali_installed
    from videoneva.media.decoders import decode_video
    from videoneva.media.encode import encode_video
    from videoneva.media.settings import MediaSettings

    cache = HERE / "results" / "tmp"
    cache.mkdir(parents=True, exist_ok=True)
    path = cached_video(cache, args.video_seconds, 30, 1280, 720, 250)
    stats, info = time_methods(path, 8, args.reps, 0)
    out = {"video": f"{args.video_seconds} s 1280x720 H.264 30 fps, key frame every 250", "num_frames": 8,
           "seconds": {m: asdict(v) for m, v in stats.items()},
           "speedup_all_over_sampled": stats["all_frames"].p50 / stats["sampled"].p50,
           "frames_to_decode_sampled": info["frames_to_decode_sampled"], "num_total_frames": info["num_total_frames"]}
    if not dali_installed():
        out["dali"] = None
        out["dali_missing"] = "nvidia-dali is not installed"
        return out
    if cuda_device_count() > 0:
        target, codec = path, "h264"
    else:  # DALI's CPU decoder reads VP9 / MJPEG only: compare both decoders on a VP9 copy
        target, codec = cache / f"bench_vp9_640x360_{args.video_seconds}s.webm", "vp9"
        if not target.is_file():
            from bench_decode import synthetic_frames

            encode_video(list(synthetic_frames(30 * args.video_seconds, 360, 640)), target, "vp9", fps=30)
    times = {}
    for dec in ("decord", "dali"):
        ms = MediaSettings(num_frames=8, decoder=dec)
        try:
            times[dec] = Stats.of(best_of(lambda: decode_video(target, ms), args.reps))
        except Exception as exc:  # noqa: BLE001  reported, not fatal: DALI's device support varies
            times[dec] = None
            out["dali_error"] = f"{type(exc).__name__}: {exc}"[:300]
    out["dali"] = {"video": str(target.name), "codec": codec, "device": "gpu" if codec == "h264" else "cpu",
                   "seconds": {k: None if v is None else asdict(v) for k, v in times.items()},
                   "dali_over_decord_speed": (times["decord"].p50 / times["dali"].p50) if times.get("dali") and times.get("decord") else None}
    return out


def feature_cache(args) -> dict:
    """Pipeline.features on a 10 s 640x360 clip: the first question (miss: decode + encode) vs a further one (hit)."""
    from bench_serving import TMP, engine, model_checkpoint, prompt_file

    from videoneva.config import InferConfig, load_config
    from videoneva.runtime.engine import pipeline_from_engine_dir
    from videoneva.runtime.pipeline import Request

    eng = TMP / "engine_demo"
    if not (eng / "manifest.json").is_file():
        eng = engine(model_checkpoint("demo", 8), "demo")
    prompts = prompt_file(TMP / "serve_media", 4, 10, 640, 360)
    clips = sorted({json.loads(ln)["video"] for ln in prompts.read_text().splitlines()})
    cfg = load_config(InferConfig, [f"engine_dir={eng}", f"inference.media_base_path={prompts.parent}", "device=cpu"])
    pipe = pipeline_from_engine_dir(eng, cfg, cache_bytes=256 * 2**20)
    miss, hit = [], []
    pipe.flow.features(Request("warm-up", "video", clips[0]))
    stages = pipe.flow.stages
    stages.cache = type(stages.cache)(256 * 2**20)
    for c in clips:
        for lst in (miss, hit, hit):
            t = time.perf_counter()
            meta = pipe.flow.features(Request("q", "video", c)).meta
            lst.append(time.perf_counter() - t)
            assert meta["cache"] == ("miss" if lst is miss else "hit")
    m, h = Stats.of(miss), Stats.of(hit)
    return {"engine": str(eng), "clips": len(clips), "video": "10 s 640x360 H.264 30 fps",
            "miss_s": asdict(m), "hit_s": asdict(h), "speedup_p50": m.p50 / h.p50,
            "note": "features only (decode + vision encode vs hash + lookup); a whole request adds the LLM"}


def markdown(r: dict) -> str:
    p, v, l, d, c = r["peak"], r["vision"], r["llm"], r["decode"], r["cache"]
    m = r["machine"]
    lines = ["# Component benchmarks (CPU, fp32)", "", "Reproduce:", "", "```", r["command"], "```", "",
             f"Created {r['created']} on {m['cpu']} ({m['usable_cpus']} usable CPUs, GPU: {m['gpu'] or 'none'}), "
             f"{r['settings']['threads']} threads; load average {m['load_average']} at the start, "
             f"{r['load_average_end']} at the end; machine cores busy during the run: {r['cpu']['machine_cores_busy']} "
             f"(this process: {r['cpu']['process_cores_busy']}).", "",
             "## Limits measured in this run", "",
             f"- matmul fp32 {p['matmul_n']}³: **{p['matmul_gflops']:.1f} GFLOP/s** (best; p50 {p['matmul_gflops_p50']:.1f})",
             f"- memory read {p['read_gbs']:.1f} GB/s, copy {p['copy_gbs']:.1f} GB/s (read + write)", "",
             "## Vision encoder", "", v["model"] + f", {v['frames_per_call']} frames per call.", "",
             "| backend | frames/s p50 | best | GFLOP per call | achieved GFLOP/s | % of matmul peak |", "|---|---|---|---|---|---|"]
    for b, x in v["backends"].items():
        if x is None:
            lines.append(f"| {b} | — | — | — | — | — ({v['tensorrt_missing']}) |")
        else:
            lines.append(f"| {b} | {x['frames_per_s']['p50']:.2f} | {x['frames_per_s']['max']:.2f} | {x['gflop_per_call']:.0f} | "
                         f"{x['achieved_gflops']:.1f} | **{x['percent_of_matmul_peak']:.0f}%** |")
    lines += ["", "Top operators of one torch vision call (self CPU time): " +
              ", ".join(f"{o['op']} {o['share']:.0%}" for o in v["profile_torch"]), "",
              "## LLM", "", l["model"] + ".", "",
              f"- prefill {l['prefill']['tokens']} tokens: **{l['prefill']['tokens_per_s']:.0f} tokens/s**, "
              f"{l['prefill']['achieved_gflops']:.1f} GFLOP/s = **{l['prefill']['percent_of_matmul_peak']:.0f}% of the matmul peak**",
              f"- decode (batch 1, KV cache, context {l['decode']['context']}): **{l['decode']['tokens_per_s']:.2f} tokens/s** "
              f"(best step {l['decode']['tokens_per_s_best']:.2f}); bound = {p['read_gbs']:.1f} GB/s ÷ "
              f"{l['weight_bytes_per_decoded_token'] / 1e9:.2f} GB per token = {l['decode']['bandwidth_bound_tokens_per_s']:.2f} "
              f"tokens/s → **{l['decode']['percent_of_bandwidth_bound']:.0f}% of the bandwidth bound** "
              f"({l['decode']['achieved_weight_gbs']:.1f} GB/s of weights)", "",
              "Top operators of one decode step: " + ", ".join(f"{o['op']} {o['share']:.0%}" for o in l["profile_decode_step"]), "",
              "## Video decode", "",
              f"{d['video']}, 8 frames: sampled {d['seconds']['sampled']['p50']:.3f} s vs whole video "
              f"{d['seconds']['all_frames']['p50']:.3f} s (p50) → **{d['speedup_all_over_sampled']:.1f}×** "
              f"({d['frames_to_decode_sampled']} of {d['num_total_frames']} frames decoded for the sample)."]
    if d.get("dali"):
        x = d["dali"]
        s = {k: ("—" if v_ is None else f"{v_['p50']:.3f} s") for k, v_ in x["seconds"].items()}
        ratio = "—" if x["dali_over_decord_speed"] is None else f"{x['dali_over_decord_speed']:.2f}×"
        lines.append(f"DALI ({x['device']}, {x['codec']} {x['video']}): decord {s['decord']}, DALI {s['dali']} → DALI "
                     f"speed {ratio} decord's" + (f" ({d['dali_error']})" if d.get("dali_error") else "") + ".")
    else:
        lines.append(f"DALI: not measured ({d.get('dali_missing')}).")
    lines += ["", "## Feature cache (in-process)", "",
              f"{c['clips']} clips ({c['video']}), demo engine: miss p50 {c['miss_s']['p50'] * 1000:.1f} ms, "
              f"hit p50 {c['hit_s']['p50'] * 1000:.2f} ms → **{c['speedup_p50']:.0f}×** ({c['note']}). "
              "On the live server: cache.md.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--frames", type=int, default=4, help="frames per vision call")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (vision, decode, peaks)")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--prefill-tokens", type=int, default=256)
    ap.add_argument("--decode-context", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=12)
    ap.add_argument("--llm-reps", type=int, default=2)
    ap.add_argument("--video-seconds", type=int, default=20)
    ap.add_argument("--only", default="peak,vision,llm,decode,cache", help="comma-separated parts to run")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = set(args.only.split(","))
    meter = CpuMeter()
    r = {"benchmark": "components", "command": command_line(), "created": now_iso(),
         "settings": {k: str(v) for k, v in vars(args).items()}, "machine": machine_info()}
    r["peak"] = peaks(args.matmul_n, max(args.reps, 3))
    print(f"peak: {r['peak']['matmul_gflops']:.1f} GFLOP/s, read {r['peak']['read_gbs']:.1f} GB/s", flush=True)
    for name, fn in (("vision", lambda: vision(args, r["peak"])), ("llm", lambda: llm(args, r["peak"])),
                     ("decode", lambda: decode(args)), ("cache", lambda: feature_cache(args))):
        r[name] = fn() if name in parts else None
        print(f"{name}: done", flush=True)
    r["peak_again"] = peaks(args.matmul_n, 3)  # the limits can drift with the machine's other load
    r["cpu"] = meter.read()
    r["load_average_end"] = machine_info()["load_average"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "components.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    if all(r[k] is not None for k in ("vision", "llm", "decode", "cache")):
        (args.out / "components.md").write_text(markdown(r))
        print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
