"""The llm model's handler: responses leave from its response thread, in order; a piece that cannot be
sent cancels only its own request."""
from __future__ import annotations

import threading

import numpy as np

from videoneva.runtime.batching import BatchingLanguageModel, Cancelled
from videoneva.schema import SamplingSettings
from videoneva.serving.models.llm import LLMModel, sampling_tensor


class _Caller:
    """What a Triton caller sees of one request: its streamed pieces, then the final outputs or error."""

    def __init__(self, fail_sends: bool = False):
        self.pieces: list[list[int]] = []
        self.final = None
        self.done = threading.Event()
        self.fail_sends = fail_sends

    def send(self, tensors):
        if self.fail_sends:
            raise RuntimeError("the stream is no longer in a valid state")
        self.pieces.append(tensors["output_ids"].tolist())

    def finish(self, out):
        self.final = out
        self.done.set()


def test_a_failed_streamed_send_cancels_its_request_and_the_others_finish(tiny_checkpoint):
    from videoneva.checkpoint.native import load_checkpoint
    from videoneva.runtime.torch_backend import TorchLanguageModel

    ckpt = load_checkpoint(tiny_checkpoint, precision="32")
    llm = BatchingLanguageModel(TorchLanguageModel(ckpt.model, ckpt.tokenizer), max_batch_size=4)
    model = LLMModel(llm, stream_interval_s=0.0)
    ids = ckpt.tokenizer.encode("What color is the shape?", add_special_tokens=False)
    def inputs(tokens):
        s = SamplingSettings(max_tokens=tokens, min_tokens=tokens, greedy=True, end_strings=[])
        return {"input_ids": np.asarray(ids, np.int32), "sampling": sampling_tensor(s), "streaming": np.array([True])}

    try:
        broken, fine = _Caller(fail_sends=True), _Caller()
        model.start(inputs(10**6), broken, broken.finish)  # never ends on its own: only the cancel ends it
        model.start(inputs(40), fine, fine.finish)
        assert broken.done.wait(120) and fine.done.wait(120)
    finally:
        llm.close()
    assert isinstance(broken.final, Cancelled) and not broken.pieces
    streamed = [t for piece in fine.pieces for t in piece]
    assert streamed == fine.final["output_ids"].tolist() and len(streamed) == 40  # every piece, in order
    assert llm.stats.cancelled == 1 and llm.active == 0
