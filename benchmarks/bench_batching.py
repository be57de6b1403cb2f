"""In-flight batching, side by side in one run: the plain baseline vs `videoneva serve` at rising concurrency.

For each answer length (fixed: ignore_eos, greedy): the baseline (videoneva.bench.baseline: NeMo-style
sampled-frame decode by random access + LlavaProcessor + transformers generate, one request at a
time) and one live server at each concurrency level, same prompts; then the server's llm executor
alone, in this process, at the highest level, to show where the time goes per step (batch sizes,
step time against batch size).

  python benchmarks/bench_batching.py --model demo      --tokens 64,256 --concurrency 1,4,8,16
  python benchmarks/bench_batching.py --model realistic --tokens 64,256 --concurrency 1,4,8,16

The server runs with its default feature cache (the prompts ask 4 questions about each of 4 clips,
so a clip is decoded once) and its default prompt-prefix cache (a later question about a clip
prefills only what follows the clip's rows); --cache-bytes 0 turns both off (every request decodes
its clip and prefills its whole prompt), --prefix-cache-bytes 0 the prefix cache alone.

Targets (ratios in one run): demo model, 64 tokens: the server at concurrency 8 ≥ 3× its own
concurrency 1; realistic shape, 256 tokens: the server at concurrency 8 ≥ 3× the baseline.
Writes results/batching_<model>[_nocache|_noprefix].{json,md}.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

import videoneva.media  # noqa: F401  (PyAV before decord)
from videoneva.bench.loadgen import GenSettings, ServerTarget, load_jobs, run_level
from videoneva.bench.metrics import same_outputs
from videoneva.bench.report import CpuMeter, command_line, machine_info, now_iso, write_json
from videoneva.cli import main as cli
from videoneva.demo.run import DEMO_INSERT

HERE = Path(__file__).resolve().parent


def build(ckpt: Path, tmp: Path, name: str, onnx: bool) -> Path:
    import json

    out = tmp / f"engine_batching_{name}{'_onnx' if onnx and name != 'demo' else ''}"
    context = json.loads((ckpt / "config.json").read_text())["text_config"]["max_position_embeddings"]
    args = [f"checkpoint={ckpt}", f"output={out}", f"max_input_len={min(context - 256, 1536)}", "max_output_len=256",
            "overwrite=true"] + (["llm.backend=onnx"] if onnx else [])
    assert cli(["build", *args]) == 0
    return out


def executor_profile(engine: Path, media_root: Path, jobs, tokens: int, concurrency: int, threads: int) -> dict:
    """The llm executor alone on real prompts: `concurrency` requests at a time, the batch-size histogram
    and the mean step time per batch size."""
    import torch

    from videoneva.config import InferConfig, load_config
    from videoneva.runtime.batching import BatchingLanguageModel
    from videoneva.runtime.engine import pipeline_from_engine_dir
    from videoneva.schema import Request, SamplingSettings

    torch.set_num_threads(threads)
    cfg = load_config(InferConfig, [f"engine_dir={engine}", f"inference.media_base_path={media_root}", "device=cpu",
                                    f"inference.insert_media_token={DEMO_INSERT}"])
    pipe = pipeline_from_engine_dir(engine, cfg, cache_bytes=0)
    prompts = []
    for job in jobs[:concurrency]:
        req = Request(job.text, job.media_type, job.media_path, insert_media_token=DEMO_INSERT)
        feats = pipe.flow.features(req).table
        _, ids = pipe.front.prompt_ids(req, int(feats.shape[0]))
        prompts.append((ids, torch.as_tensor(feats)))
    ex = BatchingLanguageModel(pipe.llm, max_batch_size=max(concurrency, 1))
    try:
        s = SamplingSettings(max_tokens=tokens, min_tokens=tokens, greedy=True, repetition_penalty=1.0)
        for h in ex.submit_many([(ids, table, s) for ids, table in prompts]):
            h.result()
    finally:
        ex.close()
    st = ex.stats
    return {"requests": len(prompts), "tokens": tokens, "steps": st.steps, "prefills": st.prefills,
            "mean_batch": st.step_sequences / st.steps if st.steps else None,
            "batch_size_steps": {int(k): int(v) for k, v in sorted(st.batch_sizes.items())},
            "step_ms_by_batch_size": {int(k): 1000 * st.step_seconds[k] / st.batch_sizes[k]
                                      for k in sorted(st.batch_sizes)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("demo", "realistic"), default="demo")
    ap.add_argument("--tokens", default="64,256", help="answer lengths (fixed)")
    ap.add_argument("--concurrency", default="1,4,8,16", help="server levels")
    ap.add_argument("--num-requests", type=int, default=None, help="timed requests per level (default: 2 × the level)")
    ap.add_argument("--baseline-requests", type=int, default=2, help="timed baseline requests per answer length")
    ap.add_argument("--frames", type=int, default=2, help="frames per video (realistic)")
    ap.add_argument("--server-threads", type=int, default=None, help="threads of the llm (default: 1 demo, 2 realistic)")
    ap.add_argument("--cache-bytes", type=int, default=256 * 2**20, help="the server's feature cache (0: off)")
    ap.add_argument("--prefix-cache-bytes", type=int, default=None,
                    help="the llm's prompt-prefix KV cache (default: the server's; 0: off)")
    ap.add_argument("--llm-backend", choices=("onnx", "torch"), default=None,
                    help="the CPU LLM (default: onnx for the demo model, torch for the realistic shape)")
    ap.add_argument("--name", default=None, help="results file stem (default: batching_<model>[_nocache|_noprefix])")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from bench_serving import TMP, model_checkpoint, prompt_file

    lengths = [int(x) for x in args.tokens.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]
    threads = args.server_threads or (1 if args.model == "demo" else 2)
    machine = machine_info()
    ckpt = model_checkpoint(args.model, args.frames)
    engine = build(ckpt, TMP, args.model, onnx=(args.llm_backend or ("onnx" if args.model == "demo" else "torch")) == "onnx")
    prompts = prompt_file(TMP / "serve_media", 4, 10, 640, 360)
    jobs = load_jobs(prompts)
    rows, records, profile = [], {}, {}

    def level(target, conc, n, gen_tokens):
        meter = CpuMeter()
        recs, s = run_level(target, jobs, conc, max(n, conc), None, 1 if target.name != "triton" else 0,
                            progress=False)
        records.setdefault((target.name, gen_tokens), []).extend(recs)
        rows.append({"target": target.name, "tokens": gen_tokens, "concurrency": conc, "requests": s.requests,
                     "errors": s.errors, "requests_per_s": s.requests_per_s, "output_tokens_per_s": s.output_tokens_per_s,
                     "ttft_p50_s": s.ttft.p50 if s.ttft else None, "itl_p50_s": s.itl.p50 if s.itl else None,
                     "e2e_p50_s": s.e2e.p50 if s.e2e else None, **meter.read()})
        print(f"{target.name} {gen_tokens} tokens c={conc}: {s.requests_per_s} req/s, {s.errors} errors "
              f"{s.error_samples[:1]}", flush=True)

    from videoneva.bench.baseline import BaselineTarget

    for tokens in lengths:
        base = BaselineTarget(ckpt, prompts.parent, GenSettings(tokens, ignore_eos=True), DEMO_INSERT)
        level(base, 1, args.baseline_requests, tokens)
        del base
        gc.collect()

    from videoneva.config import load_config
    from videoneva.serving import Client
    from videoneva.serving.serve import ServeConfig, start_server

    scfg = load_config(ServeConfig, [f"engine_dir={engine}", "grpc_port=0", "http_port=0", "metrics_port=0",
                                     f"cache_bytes={args.cache_bytes}", f"threads={threads}",
                                     *([f"prefix_cache_bytes={args.prefix_cache_bytes}"]
                                       if args.prefix_cache_bytes is not None else []),
                                     f"llm_max_batch_size={max(levels)}",
                                     f"max_tokens_limit={max(lengths)}", f"inference.tokens_to_generate={max(lengths)}",
                                     "startup_timeout=900"])
    with tempfile.TemporaryDirectory(prefix="bench_batching_") as work:
        server = start_server(scfg, work)
        try:
            with Client(server.grpc_url, timeout=3600, retries=0) as client:
                for tokens in lengths:
                    tri = ServerTarget(client, GenSettings(tokens, ignore_eos=True), prompts.parent, "bytes", DEMO_INSERT)
                    run_level(tri, jobs, max(levels), max(levels), progress=False)  # every instance's first call
                    for c in levels:
                        level(tri, c, args.num_requests or 2 * c, tokens)
        finally:
            server.stop()
    gc.collect()
    top = 8 if 8 in levels else max(levels)
    for tokens in lengths:
        profile[tokens] = executor_profile(engine, prompts.parent, jobs * 4, tokens, top, threads)

    def rps(name, tokens, conc):
        return next((r["requests_per_s"] for r in rows if (r["target"], r["tokens"], r["concurrency"]) ==
                     (name, tokens, conc)), None)

    summary = []
    for tokens in lengths:
        b, c1 = rps("baseline", tokens, 1), rps("triton", tokens, 1)
        for c in levels:
            t = rps("triton", tokens, c)
            summary.append({"tokens": tokens, "concurrency": c, "triton_requests_per_s": t,
                            "over_own_concurrency_1": t / c1 if t and c1 else None,
                            "over_baseline": t / b if t and b else None})
    same = {tokens: same_outputs(records.get(("triton", tokens), []), records.get(("baseline", tokens), []))
            for tokens in lengths}
    demo_t = next((s["over_own_concurrency_1"] for s in summary if s["tokens"] == 64 and s["concurrency"] == 8), None)
    real_t = next((s["over_baseline"] for s in summary if s["tokens"] == 256 and s["concurrency"] == 8), None)
    targets = ({"triton_c8_over_c1_at_64_tokens": {"target": 3.0, "measured": demo_t}} if args.model == "demo" else
               {"triton_c8_over_baseline_at_256_tokens": {"target": 3.0, "measured": real_t}})
    report = {"benchmark": f"in-flight batching: baseline vs videoneva serve ({args.model} model)",
              "command": command_line(), "created": now_iso(),
              "settings": {**{k: str(v) for k, v in vars(args).items()}, "llm_threads": threads, "greedy": True,
                           "ignore_eos": True, "cache_bytes": args.cache_bytes, "engine_dir": str(engine),
                           "media": "4 H.264 clips, 10 s 640x360 30 fps, sent as bytes"},
              "machine": {**machine, "load_average_end": machine_info()["load_average"]},
              "rows": rows, "summary": summary, "same_outputs_triton_vs_baseline": same, "executor_profile": profile,
              "targets": targets}
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = 0 if args.cache_bytes == 0 else scfg.prefix_cache_bytes  # the prefix key is the feature cache's hash
    report["settings"]["prefix_cache_bytes"] = prefix
    name = args.name or (f"batching_{args.model}" + ("_nocache" if args.cache_bytes == 0 else
                                                     "_noprefix" if prefix == 0 else ""))
    write_json(report, args.out / f"{name}.json")
    md = [f"# In-flight batching: baseline vs `videoneva serve`, {args.model} model", "", f"`{report['command']}`", "",
          f"{report['created']}; {machine.get('cpu', '')} load average {machine['load_average']} at the start, "
          f"{report['machine']['load_average_end']} at the end; llm threads {threads}; feature cache "
          f"{'off' if args.cache_bytes == 0 else f'{args.cache_bytes} bytes'}; prompt-prefix cache "
          f"{'off' if prefix == 0 else f'{prefix} bytes'}.", "",
          "| answer tokens | target | concurrency | requests/s | output tokens/s | TTFT p50 (s) | ITL p50 (ms) | × own c=1 | × baseline |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = next((x for x in summary if r["target"] == "triton" and (x["tokens"], x["concurrency"]) ==
                  (r["tokens"], r["concurrency"])), {})
        f = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
        md.append(f"| {r['tokens']} | {r['target']} | {r['concurrency']} | {f(r['requests_per_s'], '.3f')} | "
                  f"{f(r['output_tokens_per_s'], '.1f')} | {f(r['ttft_p50_s'], '.3f')} | "
                  f"{f(r['itl_p50_s'] and r['itl_p50_s'] * 1000, '.1f')} | {f(s.get('over_own_concurrency_1'), '.2f')} | "
                  f"{f(s.get('over_baseline'), '.2f')} |")
    md += ["", "Identical token ids, server vs baseline: " + ", ".join(
        f"{t} tokens {'—' if v is None else f'{v:.0%}'}" for t, v in same.items()), "",
        "Targets: " + "; ".join(f"{k} ≥ {v['target']}×: measured " + ("—" if v["measured"] is None else
                                                                          f"{v['measured']:.2f}×")
                                for k, v in targets.items()), "",
        f"## Where the time goes per step (the llm executor alone, {top} requests at once)", "",
        "| answer tokens | mean batch | steps by batch size | step ms by batch size |", "|---|---|---|---|"]
    for tokens, p in profile.items():
        md.append(f"| {tokens} | {p['mean_batch']:.2f} | " + ", ".join(f"{k}: {v}" for k, v in p["batch_size_steps"].items())
                  + " | " + ", ".join(f"{k}: {v:.1f}" for k, v in p["step_ms_by_batch_size"].items()) + " |")
    (args.out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
