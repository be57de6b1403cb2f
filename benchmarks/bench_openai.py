"""The OpenAI-compatible API measured by NVIDIA AIPerf, side by side with `videoneva bench` over gRPC.

One `videoneva serve … openai_port=0` server (the demo model, feature cache off so every request
decodes and encodes its video), the same prompts (H.264 clips, each asked every question), the same
decoding (greedy, repetition penalty 1.0, exactly --tokens output tokens: min_tokens = max_tokens),
streamed, at each concurrency level:

  aiperf     `aiperf profile --endpoint-type chat --streaming` on /v1/chat/completions; the clips go
             as base64 `video_url` data URLs (AIPerf's single_turn dataset: one text part, then the
             video, which the server renders as "question<video>")
  openai_loadgen  videoneva's own load generator (the one `videoneva bench` runs) on the same
             OpenAI endpoint with the same data URLs: the protocol's cost apart from the tool's
  videoneva_bench  `videoneva bench` over gRPC, media sent as bytes, insert_media_token=right (the
             same prompt)

The tools take turns (--rounds, the order reversed every round), so a change of machine load hits
all; each cell of the table is the median over the rounds. Each run's client CPU seconds are
recorded: on a small machine the client's own processes take CPU from the server. AIPerf runs in its own virtual
environment (it needs numpy 2): --aiperf names its executable (default: .venv-aiperf/bin/aiperf;
`python3 -m venv .venv-aiperf && .venv-aiperf/bin/pip install aiperf`).

  python benchmarks/bench_openai.py [--concurrency 1,4] [--num-requests 32] [--rounds 3] [--tokens 8]

Writes results/openai_aiperf.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TMP = HERE / "results" / "tmp"


def start_server(eng: Path, media: Path, levels: list[int], threads: int) -> tuple[subprocess.Popen, str, str]:
    """`videoneva serve` with the OpenAI API; returns (process, gRPC address, OpenAI base URL)."""
    cmd = [sys.executable, "-m", "videoneva.cli", "serve", f"engine_dir={eng}", f"media_root={media}", "grpc_port=0",
           "http_port=0", "metrics_port=0", "openai_port=0", "cache_bytes=0", f"threads={threads}",
           f"videoneva_instances={max(levels)}", "startup_timeout=600"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        print(line, end="", flush=True)
        if "videoneva serve: ready" in line:
            return proc, re.search(r"grpc=(\S+)", line).group(1), re.search(r"openai=(\S+)/v1", line).group(1)
    raise RuntimeError(f"the server did not start (exit status {proc.wait()})")


def aiperf_dataset(prompts: Path, out: Path) -> Path:
    """The prompt file as AIPerf's single_turn jsonl: the question and the clip's absolute path."""
    lines = [json.loads(ln) for ln in prompts.read_text().splitlines() if ln.strip()]
    out.write_text("".join(json.dumps({"text": ln["text"], "video": str(prompts.parent / ln["video"])}) + "\n"
                           for ln in lines))
    return out


def timed_run(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run a tool; also the CPU seconds its processes used (the client's own cost on a shared machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_aiperf(exe: str, url: str, model: str, data: Path, eng: Path, c: int, n: int, tokens: int, warmup: int,
               out: Path) -> dict:
    cmd = [exe, "profile", "--model", model, "--url", url, "--endpoint-type", "chat", "--streaming",
           "--input-file", str(data), "--custom-dataset-type", "single_turn", "--concurrency", str(c),
           "--request-count", str(max(n, c)), "--warmup-request-count", str(warmup),
           "--tokenizer", str(eng / "tokenizer"), "--use-server-token-count",
           "--extra-inputs", f"max_tokens:{tokens}", "--extra-inputs", f"min_tokens:{tokens}",
           "--extra-inputs", "temperature:0", "--extra-inputs", "repetition_penalty:1.0",
           "--artifact-dir", str(out), "--ui-type", "none", "--random-seed", "0",
           # one worker and one record processor: the smallest client AIPerf runs (its services are
           # processes, and on 2 cores every busy client process takes CPU from the server)
           "--workers-max", "1", "--record-processor-service-count", "1"]
    r, cpu_s = timed_run(cmd)
    if r.returncode != 0:
        raise RuntimeError(f"aiperf failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    found = sorted(out.rglob("profile_export_aiperf.json"))
    if not found:
        raise RuntimeError(f"aiperf wrote no profile_export_aiperf.json under {out}:\n{r.stdout[-2000:]}")
    m = json.loads(found[-1].read_text())

    def metric(name, stat="avg"):
        v = m.get(name)
        return None if not isinstance(v, dict) else v.get(stat)

    return {"ttft_p50_ms": metric("time_to_first_token", "p50"), "ttft_mean_ms": metric("time_to_first_token"),
            "e2e_p50_ms": metric("request_latency", "p50"), "requests_per_s": metric("request_throughput"),
            "output_tokens_per_s": metric("output_token_throughput"),
            "requests": metric("request_count"), "errors": (m.get("error_request_count") or {}).get("avg", 0),
            "client_cpu_s": cpu_s, "command": " ".join(cmd)}


def run_videoneva(grpc: str, prompts: Path, c: int, n: int, tokens: int, warmup: int, out: Path) -> dict:
    argv = ["bench", f"server_url={grpc}", f"prompt_file={prompts}", f"concurrency={c}", f"num_requests={n}",
            f"tokens_to_generate={tokens}", "ignore_eos=true", f"warmup={warmup}", "insert_media_token=right",
            "send_media=bytes", f"output_dir={out}", "name=videoneva_bench", "plots=false", "progress=false"]
    r, cpu_s = timed_run([sys.executable, "-m", "videoneva.cli", *argv])
    if r.returncode != 0:
        raise RuntimeError(f"videoneva bench failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    lv = json.loads((out / "videoneva_bench.json").read_text())["targets"]["triton"]["levels"][0]
    ms = (lambda s, k: None if s is None else s[k] * 1000)
    return {"ttft_p50_ms": ms(lv["ttft"], "p50"), "ttft_mean_ms": ms(lv["ttft"], "mean"),
            "e2e_p50_ms": ms(lv["e2e"], "p50"), "requests_per_s": lv["requests_per_s"],
            "output_tokens_per_s": lv["output_tokens_per_s"], "requests": lv["requests"], "errors": lv["errors"],
            "client_cpu_s": cpu_s, "command": "videoneva " + " ".join(argv)}


class OpenAITarget:
    """videoneva's load generator (videoneva.bench.loadgen) on the OpenAI API: the same client as
    `videoneva bench`, the other protocol. One keep-alive http.client connection per thread; each
    streamed content chunk counts as a token, as a text piece does over gRPC."""

    name = "openai_loadgen"

    def __init__(self, url: str, model: str, media_root: Path, tokens: int):
        import threading
        from urllib.parse import urlsplit

        self.addr, self.model, self.root, self.tokens = urlsplit(url).netloc, model, media_root, tokens
        self._local, self._urls = threading.local(), {}

    def _url(self, path: str) -> str:
        import base64

        if path not in self._urls:
            self._urls[path] = "data:video/mp4;base64," + base64.b64encode((self.root / path).read_bytes()).decode()
        return self._urls[path]

    def send(self, job, on_token) -> list[int]:
        import http.client

        conn = getattr(self._local, "conn", None) or http.client.HTTPConnection(self.addr, timeout=600)
        self._local.conn = conn
        body = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0,
                "max_tokens": self.tokens, "min_tokens": self.tokens, "repetition_penalty": 1.0,
                "messages": [{"role": "user", "content": [{"type": "text", "text": job.text},
                                                          {"type": "video_url", "video_url": {"url": self._url(job.media_path)}}]}]}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
        completion = 0
        for line in r:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                on_token(1)
            if event.get("usage"):
                completion = event["usage"]["completion_tokens"]
        return [0] * completion


def run_openai_loadgen(url: str, model: str, prompts: Path, c: int, n: int, tokens: int, warmup: int) -> dict:
    from videoneva.bench.loadgen import load_jobs, run_level

    target = OpenAITarget(url, model, prompts.parent, tokens)
    before = resource.getrusage(resource.RUSAGE_SELF)
    _, s = run_level(target, load_jobs(prompts), c, max(n, c), None, warmup, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF)
    ms = (lambda st, k: None if st is None else getattr(st, k) * 1000)
    return {"ttft_p50_ms": ms(s.ttft, "p50"), "ttft_mean_ms": ms(s.ttft, "mean"), "e2e_p50_ms": ms(s.e2e, "p50"),
            "requests_per_s": s.requests_per_s, "output_tokens_per_s": s.output_tokens_per_s, "requests": s.requests,
            "errors": s.errors, "client_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "command": "in process: videoneva.bench.loadgen.run_level(OpenAITarget(…))"}


KEYS = ("ttft_p50_ms", "ttft_mean_ms", "e2e_p50_ms", "requests_per_s", "output_tokens_per_s", "client_cpu_s")


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) if all(r[k] is not None for r in runs) else None for k in KEYS}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


NOTES = [
    "Client CPU: the CPU seconds of the tool's own processes over its whole run. aiperf and videoneva_bench "
    "are separate processes, so theirs include starting up (AIPerf's services, videoneva's imports); "
    "openai_loadgen runs inside this script and counts only its requests.",
    "Reading the ratios: openai_loadgen / videoneva_bench is the same client on the two protocols, so it is "
    "the OpenAI API's own cost (HTTP + JSON, a base64 data URL a third larger than the file, one thread hop); "
    "aiperf / openai_loadgen is the cost of the tool, whose client processes share the machine's cores with "
    "the server.",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--num-requests", type=int, default=32, help="timed requests per level and tool")
    ap.add_argument("--rounds", type=int, default=3, help="turns of each tool per level (alternating)")
    ap.add_argument("--tokens", type=int, default=8, help="output tokens per answer (fixed)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--server-threads", type=int, default=1)
    ap.add_argument("--aiperf", default=str(ROOT / ".venv-aiperf" / "bin" / "aiperf"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if not shutil.which(args.aiperf):
        raise SystemExit(f"aiperf not found at {args.aiperf}: python3 -m venv .venv-aiperf && "
                         ".venv-aiperf/bin/pip install aiperf")
    sys.path.insert(0, str(HERE))
    from bench_serving import engine, model_checkpoint, prompt_file

    from videoneva.bench.report import command_line, machine_info, now_iso

    levels = [int(x) for x in args.concurrency.split(",")]
    width, height = (int(x) for x in args.size.split("x"))
    eng = TMP / "engine_demo"
    if not (eng / "manifest.json").is_file():
        eng = engine(model_checkpoint("demo", 8), "demo")
    prompts = prompt_file(TMP / "serve_media", args.videos, args.seconds, width, height)
    model = json.loads((eng / "media.json").read_text()).get("model_id") or "videoneva"
    machine = machine_info()
    results: dict = {"aiperf": {}, "openai_loadgen": {}, "videoneva_bench": {}}
    loads = []
    with tempfile.TemporaryDirectory(prefix="bench_openai_") as work:
        work = Path(work)
        data = aiperf_dataset(prompts, work / "aiperf_prompts.jsonl")
        proc, grpc, url = start_server(eng, prompts.parent, levels, args.server_threads)
        try:
            from openai import OpenAI

            model = OpenAI(base_url=url + "/v1", api_key="none").models.list().data[0].id
            for c in levels:
                for rnd in range(args.rounds):
                    order = ("aiperf", "openai_loadgen", "videoneva_bench")
                    for tool in (order if rnd % 2 == 0 else order[::-1]):
                        out = work / f"{tool}_c{c}_r{rnd}"
                        before = load()
                        if tool == "aiperf":
                            r = run_aiperf(args.aiperf, url, model, data, eng, c, args.num_requests, args.tokens,
                                           args.warmup, out)
                        elif tool == "openai_loadgen":
                            r = run_openai_loadgen(url, model, prompts, c, args.num_requests, args.tokens, args.warmup)
                        else:
                            r = run_videoneva(grpc, prompts, c, args.num_requests, args.tokens, args.warmup, out)
                        r["load_average_before"] = before
                        loads.append(before)
                        results[tool].setdefault(str(c), []).append(r)
                        print(f"c={c} round {rnd} {tool}: TTFT p50 {r['ttft_p50_ms']:.1f} ms, "
                              f"{r['requests_per_s']:.3f} req/s, {r['errors']} errors, load {before}", flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    table = ["| concurrency | tool | TTFT p50 (ms) | TTFT mean (ms) | e2e p50 (ms) | requests/s | output tokens/s | "
             "client CPU s (whole run) |", "|---|---|---|---|---|---|---|---|"]
    ratios = {}
    for c in levels:
        med = {tool: median_of(results[tool][str(c)]) for tool in results}
        ratios[str(c)] = {other: {k: (med[other][k] / med["videoneva_bench"][k]) if med[other][k] and
                                  med["videoneva_bench"][k] else None for k in KEYS}
                          for other in ("aiperf", "openai_loadgen")}
        for tool in results:
            m = med[tool]
            table.append(f"| {c} | {tool} | " + " | ".join("—" if m[k] is None else f"{m[k]:.1f}" if "ms" in k
                                                           else f"{m[k]:.3f}" for k in KEYS) + " |")
        for other, r in ratios[str(c)].items():
            table.append(f"| {c} | {other} / videoneva_bench | " + " | ".join("—" if r[k] is None else f"{r[k]:.2f}×"
                                                                             for k in KEYS) + " |")
    report = {"benchmark": "OpenAI API under AIPerf vs gRPC under videoneva bench (demo model, same server)",
              "command": command_line(), "created": now_iso(),
              "settings": {**{k: str(v) for k, v in vars(args).items()}, "cache_bytes": 0, "greedy": True,
                           "repetition_penalty": 1.0, "media": f"{args.videos} H.264 clips, {args.seconds} s "
                           f"{args.size} 30 fps: base64 data URLs (aiperf) / gRPC bytes (videoneva bench)"},
              "model": model, "engine_dir": str(eng),
              "machine": {**machine, "load_average_end": load(), "load_average_before_each_run": loads},
              "runs": results, "median_ratio_over_videoneva_bench": ratios, "table_md": table}
    prefix = args.out / "openai_aiperf"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    md = [f"# {report['benchmark']}", "", "Reproduce:", "", "```", report["command"], "```", "",
          f"Created {report['created']} on {m['cpu']} ({m['usable_cpus']} usable CPUs, GPU: {m['gpu'] or 'none'}); "
          f"load average before each run: {loads}; at the end {m['load_average_end']}.", "",
          f"Medians over {args.rounds} alternating rounds of {args.num_requests} requests per level and tool.", "",
          *table, "", *NOTES, "", "The commands of each run are in the JSON (`runs.*.*.command`)."]
    prefix.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(table))
    print(f"wrote {prefix}.json / .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
