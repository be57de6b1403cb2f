"""Every videoneva model's `1/model.py` (`videoneva serve` copies it there).

The model's config.pbtxt names its handler (a module under videoneva/serving/models/); the
generic TritonPythonModel below runs it. The stub's interpreter is the environment videoneva is
installed in (`videoneva serve` starts the server with that interpreter first on PATH).
"""
from videoneva.serving.triton_model import TritonPythonModel  # noqa: F401
