"""Decode benchmark: decord get_batch on the N sampled frames vs decoding every frame of a long 720p H.264 video.

Generates (and caches under benchmarks/results/tmp/) a synthetic 1280x720, 30 fps H.264 video per
key-frame interval, then times, alternating the order each repetition:
  sampled      decord VideoReader + get_batch(select_frame_indices(total, num_frames))
  all_frames   decord VideoReader + next() over every frame (a sequential full decode, what
               NeMo's num_frames=-1 path or "decode then sample" costs)
  videoneva    videoneva.media.decode_video(decoder=decord): PyAV probe + the sampled get_batch
Each timing includes opening the file, as a request would. Writes results/decode.json and
results/decode.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import videoneva.media  # noqa: F401  (PyAV before decord)
from videoneva.media.decoders import decode_video
from videoneva.media.encode import encode_video
from videoneva.media.frames import select_frame_indices
from videoneva.media.settings import MediaSettings
from videoneva.stats import Stats

HERE = Path(__file__).resolve().parent
METHODS = ("sampled", "all_frames", "videoneva")

def synthetic_frames(n: int, height: int, width: int, seed: int = 0):
    """Yield n uint8 [H, W, 3] frames: a blocky random texture panning 4 px per frame (cheap, but
    real motion and detail for the encoder, unlike a flat colour)."""
    rng = np.random.default_rng(seed)
    block = 8
    tex = rng.integers(0, 256, (height // block, width // block + n // 2 + 1, 3), dtype=np.uint8)
    tex = tex.repeat(block, 0).repeat(block, 1)  # [H, W + 4n, 3]
    for i in range(n):
        x = (4 * i) % (tex.shape[1] - width)
        yield np.ascontiguousarray(tex[:height, x:x + width])


def cached_video(cache: Path, seconds: int, fps: int, width: int, height: int, keyint: int) -> Path:
    path = cache / f"bench_h264_{width}x{height}_{fps}fps_{seconds}s_g{keyint}.mp4"
    if not path.exists():
        tmp = path.with_suffix(".part.mp4")
        t0 = time.perf_counter()
        encode_video(synthetic_frames(seconds * fps, height, width), tmp, "h264", fps=fps, options={"g": str(keyint)})
        tmp.rename(path)
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def frames_to_decode(indices: list[int], key_frames: list[int]) -> int:
    """Frames a seek-then-decode reader must decode for sorted targets: from the key frame before
    each target (or on from the previous target when that is in the same GOP)."""
    keys = np.asarray(sorted(key_frames))
    pos, count = -1, 0
    for t in sorted(set(indices)):
        key = int(keys[np.searchsorted(keys, t, side="right") - 1])
        start = pos + 1 if key <= pos < t else key
        count += t - start + 1
        pos = t
    return count


def time_methods(path: Path, num_frames: int, repeats: int, threads: int) -> tuple[dict, dict]:
    import decord

    total = len(decord.VideoReader(str(path), num_threads=threads))
    indices = select_frame_indices(total, num_frames)
    settings = MediaSettings(num_frames=num_frames, decoder="decord")

    def sampled():
        vr = decord.VideoReader(str(path), num_threads=threads)
        out = vr.get_batch(indices).asnumpy()
        assert out.shape[0] == len(indices)

    def all_frames():
        vr = decord.VideoReader(str(path), num_threads=threads)
        for _ in range(len(vr)):
            vr.next()

    def ours():
        frames, meta = decode_video(path, settings)
        assert meta.indices == indices

    fns: dict[str, Callable[[], None]] = {"sampled": sampled, "all_frames": all_frames, "videoneva": ours}
    for fn in fns.values():  # warm-up: page cache, library initialisation
        fn()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for rep in range(repeats):
        order = METHODS if rep % 2 == 0 else tuple(reversed(METHODS))  # alternate to spread drift
        for m in order:
            t0 = time.perf_counter()
            fns[m]()
            times[m].append(time.perf_counter() - t0)
    keys = list(decord.VideoReader(str(path)).get_key_indices())
    info = {"num_total_frames": total, "sampled_indices": indices, "num_key_frames": len(keys),
            "frames_to_decode_sampled": frames_to_decode(indices, keys)}
    return {m: Stats.of(v) for m, v in times.items()}, {**info, "samples_s": times}


def machine_info() -> dict:
    import decord

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import av
        av_version: Optional[str] = av.__version__
    except ImportError:
        av_version = None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "numpy": np.__version__, "decord": decord.__version__,
            "av": av_version}


def write_markdown(path: Path, report: dict) -> None:
    s, m = report["settings"], report["machine"]
    lines = [
        "# Decode benchmark: sampled frames vs full decode",
        "",
        "Reproduce:",
        "",
        f"```\n{report['command']}\n```",
        "",
        f"{s['seconds']} s {s['width']}x{s['height']} H.264 at {s['fps']} fps (synthetic panning texture, "
        f"x264 ultrafast, crf 23), {s['num_frames']} frames sampled uniformly (NeMo's linspace), "
        f"{s['repeats']} timed repetitions after one warm-up, methods alternated; decord num_threads={s['threads']}. "
        "Each time includes opening the file.",
        "",
        f"Machine: {m['cpu']}, {m['affinity']} usable CPUs, load average at start {m['loadavg_at_start']}; "
        f"decord {m['decord']}, PyAV {m['av']}, Python {m['python']}. Created {report['created']}.",
        "",
        "| key-frame interval | file | frames decoded for the sample (est.) | sampled get_batch p50 (s) | all frames p50 (s) | videoneva decode_video p50 (s) | speed-up (all / sampled) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in report["videos"]:
        r = v["results"]
        lines.append(f"| {v['keyint']} frames | {v['bytes'] / 1e6:.1f} MB, {v['num_total_frames']} frames | "
                     f"{v['frames_to_decode_sampled']} of {v['num_total_frames']} | "
                     f"{r['sampled']['p50']:.3f} | {r['all_frames']['p50']:.3f} | {r['videoneva']['p50']:.3f} | "
                     f"**{v['speedup_p50']:.1f}x** |")
    lines += ["", "min / max per method are in decode.json (with every sample). `videoneva` adds the PyAV header "
              "probe (codec, size, frame-size limit) to the sampled decode. \"frames decoded\" counts, from the key-frame "
              "positions, what a reader that seeks to the key frame before each sampled frame must decode; the sampled "
              "decode also skips the RGB conversion of every frame it does not return.", ""]
    path.write_text("\n".join(lines))


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seconds", type=int, default=60, help="video length")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--keyint", type=int, nargs="+", default=[30, 60, 250, 300],
                   help="x264 key-frame intervals to test, one video each (250 = x264's default); how far "
                        "each sampled frame lies from the key frame before it sets the cost of the sampled decode")
    p.add_argument("--num-frames", type=int, default=8, help="frames sampled uniformly")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per method")
    p.add_argument("--threads", type=int, default=0, help="decord num_threads (0 = automatic)")
    p.add_argument("--cache-dir", type=Path, default=HERE / "results" / "tmp", help="where generated videos are kept")
    p.add_argument("--out-dir", type=Path, default=HERE / "results", help="where decode.json / decode.md go")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.num_frames < 1:
        p.error("--repeats and --num-frames must be >= 1")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    cmd_args = argv if argv is not None else sys.argv[1:]
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_decode.py", *cmd_args])
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"benchmark": "decode", "command": command, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "settings": settings, "machine": machine_info(), "videos": []}
    for keyint in args.keyint:
        path = cached_video(args.cache_dir, args.seconds, args.fps, args.width, args.height, keyint)
        stats, info = time_methods(path, args.num_frames, args.repeats, args.threads)
        speedup = stats["all_frames"].p50 / stats["sampled"].p50
        report["videos"].append({"keyint": keyint, "path": str(path), "bytes": path.stat().st_size, **info,
                                 "results": {m: asdict(s) for m, s in stats.items()}, "speedup_p50": speedup})
        print(f"keyint {keyint}: sampled p50 {stats['sampled'].p50:.3f} s, all frames p50 {stats['all_frames'].p50:.3f} s, "
              f"videoneva p50 {stats['videoneva'].p50:.3f} s, speed-up {speedup:.1f}x", flush=True)
    (args.out_dir / "decode.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out_dir / "decode.md", report)
    print(f"wrote {args.out_dir / 'decode.json'} and {args.out_dir / 'decode.md'}")
    return report


if __name__ == "__main__":
    main()
