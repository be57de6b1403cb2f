"""The live-server fixtures of tests/serving (a real tritonserver on the tiny engine), reused here."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_serving_conftest", Path(__file__).parents[1] / "serving" / "conftest.py")
_serving = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_serving)

engine_dir = _serving.engine_dir
server = _serving.server
client = _serving.client
local_pipeline = _serving.local_pipeline
