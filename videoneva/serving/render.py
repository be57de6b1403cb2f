"""Render triton_repo/ templates into a runnable Triton model repository, strictly.

Each template model is a folder `triton_repo/<model>/` with a `config.pbtxt` holding `${key}`
placeholders; every rendered model gets the one bootstrap `triton_repo/model.py` as `1/model.py`.
Rendering fails on a placeholder no value was given for, on a value no template uses, and on any
`${` left after substitution (tensorrtllm_backend's fill_template.py uses safe_substitute and
silently leaves holes; we do not). The templates ship inside the package (`videoneva/triton_repo`),
so an installed wheel renders the same repository as a source checkout.
"""
from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

from videoneva.errors import ConfigError

TEMPLATE_DIR = Path(str(resources.files("videoneva") / "triton_repo"))
BOOTSTRAP = "model.py"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def pbtxt_string(value: object) -> str:
    """A value escaped for the inside of a protobuf text-format string literal."""
    return json.dumps(str(value), ensure_ascii=False)[1:-1]


def placeholders(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text))


def render_text(text: str, values: Mapping[str, object], where: str) -> str:
    """Substitute every `${key}`; unknown placeholders or leftovers raise ConfigError."""
    missing = sorted(placeholders(text) - set(values))
    if missing:
        raise ConfigError(f"{where}: no value for template placeholder(s) {missing}")
    out = _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
    if "${" in out:
        raise ConfigError(f"{where}: malformed or leftover '${{…}}' after rendering")
    return out


def render_repository(out_dir: str | Path, models: Mapping[str, Mapping[str, object]],
                      template_dir: str | Path = TEMPLATE_DIR) -> Path:
    """Write a model repository with the named template models, each filled with its values.

    Args:
        out_dir: the repository to (re)create; must be empty or absent.
        models: model name → {placeholder: value}; values go in verbatim (escape strings that
            land inside quotes with pbtxt_string).
        template_dir: where the templates live (default: the package's triton_repo/).

    Returns:
        out_dir as a Path.
    """
    src, out = Path(template_dir), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"model repository {out} is not empty; give an empty or new folder")
    available = sorted(p.name for p in src.iterdir() if (p / "config.pbtxt").is_file()) if src.is_dir() else []
    unknown = sorted(set(models) - set(available))
    if unknown:
        raise ConfigError(f"no template for model(s) {unknown} in {src}; available: {available}")
    out.mkdir(parents=True, exist_ok=True)
    for name, values in models.items():
        text = (src / name / "config.pbtxt").read_text(encoding="utf-8")
        unused = sorted(set(values) - placeholders(text))
        if unused:
            raise ConfigError(f"{src / name / 'config.pbtxt'}: unknown template key(s) {unused}; "
                              f"it takes {sorted(placeholders(text))}")
        (out / name).mkdir()
        (out / name / "config.pbtxt").write_text(render_text(text, values, f"{name}/config.pbtxt"), encoding="utf-8")
        (out / name / "1").mkdir()
        shutil.copyfile(src / BOOTSTRAP, out / name / "1" / "model.py")
    return out


def template_models(template_dir: str | Path = TEMPLATE_DIR) -> Iterable[str]:
    return sorted(p.name for p in Path(template_dir).iterdir() if (p / "config.pbtxt").is_file())
