"""Triton model `preprocess`: decode the sampled frames of one media item and CLIP-preprocess them.

The entry model sends the media (bytes, or a path under the server's media root) and the media
settings it resolved for the request; this model imports the media stack only.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from videoneva.media import decode_media, media_report, media_source
from videoneva.media.settings import MediaSettings
from videoneva.media.sources import MediaRoot
from videoneva.schema import RequestError
from videoneva.serving.tensors import Tensors, json_of, json_tensor, text_of

INPUTS = {"media_settings": ("TYPE_STRING", [1]), "media_bytes_input": ("TYPE_UINT8", [-1]),
          "media_path": ("TYPE_STRING", [1])}
OUTPUTS = {"pixel_values": ("TYPE_FP32", [-1, 3, -1, -1]), "media_meta": ("TYPE_STRING", [1])}
DECOUPLED = False


class PreprocessModel:
    def __init__(self, media_root: Optional[str]):
        self.root = MediaRoot(media_root) if media_root else None

    def __call__(self, inputs: Tensors, call=None) -> Tensors:
        settings = MediaSettings(**json_of(inputs["media_settings"], "media_settings"))
        path = text_of(inputs.get("media_path"), "media_path")
        if "media_bytes_input" in inputs:
            source, name = np.asarray(inputs["media_bytes_input"], np.uint8).tobytes(), "<bytes>"
        elif path is not None and self.root is not None:
            source, name = media_source(self.root, path, settings.max_bytes), path
        else:
            raise RequestError("preprocess needs media_bytes_input, or media_path on a server with a media root")
        sample = decode_media(source, settings, name)
        return {"pixel_values": np.ascontiguousarray(sample.pixel_values, np.float32),
                "media_meta": json_tensor(media_report(sample))}


def make(params: dict[str, str], bls=None) -> PreprocessModel:
    return PreprocessModel(params.get("media_root") or None)
