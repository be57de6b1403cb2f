"""videoneva: build, serve, benchmark, evaluate and finetune Video NeVA models."""

__version__ = "0.1.0"
