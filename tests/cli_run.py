"""Running documented commands for real: a stand-in judge on loopback, `videoneva serve` in the background."""
from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Judge(BaseHTTPRequestHandler):
    """A stand-in for the judge's OpenAI-compatible endpoint: every review scores 8 and 7."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        data = json.dumps({"id": "r", "object": "chat.completion", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "8 7\nBoth fit."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Judge:
    """The stand-in judge on a free loopback port; `url` is its --api-base."""

    def __enter__(self) -> "Judge":
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def start_serve(cmd: str, ports: dict[int, int], cwd, env) -> subprocess.Popen:
    """`videoneva serve …` (a trailing & dropped) on the given ports, in its own session, once ready."""
    args = shlex.split(cmd.rstrip("& ")) + [f"grpc_port={ports[8001]}", f"http_port={ports[8000]}",
                                            f"metrics_port={ports[8002]}", "startup_retries=2"]
    server = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    lines, deadline = [], time.monotonic() + 900
    while time.monotonic() < deadline:
        out = server.stdout.readline()
        if not out:
            break
        lines.append(out)
        if "videoneva serve: ready" in out:
            return server
    server.kill()
    raise AssertionError("videoneva serve never became ready:\n" + "".join(lines[-40:]))
