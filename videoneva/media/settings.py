"""MediaSettings: how a video or image becomes pixel_values (sampling, preprocessing, decoder, limits)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from videoneva.errors import ConfigError

# OpenAI CLIP normalisation (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

MEDIA_TYPES = ("video", "image")
SPLICE_CHOICES = (None, "first", "middle", "last")
ASPECT_CHOICES = ("square", "pad", "keep")
DECODER_CHOICES = ("auto", "decord", "dali")

DEFAULT_MAX_BYTES = 2 * 2**30            # 2 GiB per media file
DEFAULT_MAX_FRAME_PIXELS = 2**25         # 33.5 M px: 8K UHD (7680x4320) fits
DEFAULT_MAX_DECODED_PIXELS = 2**29       # 537 M px over all decoded frames ≈ 1.6 GB of uint8 RGB

# Fields that change the decoded/preprocessed tensor; the safety limits only accept or refuse.
OUTPUT_FIELDS = ("media_type", "num_frames", "splice_single_frame", "image_size", "crop_size",
                 "image_mean", "image_std", "image_aspect_ratio", "decoder")


def _choice(key: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {list(choices)}")


def _positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def _triple(key: str, value: object, positive: bool) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)  # YAML gives lists; keep tuples so settings hash alike
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be 3 numbers (R, G, B), got {value!r}") from None
    if len(out) != 3 or (positive and min(out) <= 0):
        raise ConfigError(f"{key} must be 3 {'positive ' if positive else ''}numbers (R, G, B), got {value!r}")
    return out  # type: ignore[return-value]


@dataclass
class MediaSettings:
    """Sampling + preprocessing of one media item; NeMo's `data.*` keys where they exist.

    Attributes:
        media_type: "video" (N frames) or "image" (one frame).
        num_frames: frames sampled uniformly over a video; -1 = every frame (NeMo).
        splice_single_frame: None, or "first" | "middle" | "last": take that one frame instead.
        image_size: CLIP resize target of the shortest edge.
        crop_size: side of the centre crop ("square"/"pad").
        image_mean, image_std: per-channel normalisation (CLIP's by default).
        image_aspect_ratio: "square" (NeMo's default: resize + centre crop), "pad" (expand to a
            square filled with the mean colour first) or "keep" (no crop; see preprocess.py).
        decoder: "auto" | "decord" | "dali" (see decoders.py for how auto chooses).
        max_bytes: refuse media files larger than this.
        max_frame_pixels: refuse videos/images whose frame has more pixels (H*W) than this.
        max_decoded_pixels: refuse a decode whose frames together (F*H*W) exceed this
            (guards num_frames=-1 on long videos).
    """

    media_type: str = "video"
    num_frames: int = 8
    splice_single_frame: Optional[str] = None
    image_size: int = 224
    crop_size: int = 224
    image_mean: tuple[float, float, float] = field(default=CLIP_MEAN)
    image_std: tuple[float, float, float] = field(default=CLIP_STD)
    image_aspect_ratio: str = "square"
    decoder: str = "auto"
    max_bytes: int = DEFAULT_MAX_BYTES
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS

    def __post_init__(self) -> None:
        _choice("media_type", self.media_type, MEDIA_TYPES)
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or (
                self.num_frames < 1 and self.num_frames != -1):
            raise ConfigError(f"num_frames must be -1 (all frames) or a positive integer, got {self.num_frames!r}")
        _choice("splice_single_frame", self.splice_single_frame, SPLICE_CHOICES)
        _positive_int("image_size", self.image_size)
        _positive_int("crop_size", self.crop_size)
        self.image_mean = _triple("image_mean", self.image_mean, positive=False)
        self.image_std = _triple("image_std", self.image_std, positive=True)
        _choice("image_aspect_ratio", self.image_aspect_ratio, ASPECT_CHOICES)
        _choice("decoder", self.decoder, DECODER_CHOICES)
        _positive_int("max_bytes", self.max_bytes)
        _positive_int("max_frame_pixels", self.max_frame_pixels)
        _positive_int("max_decoded_pixels", self.max_decoded_pixels)

    @classmethod
    def from_checkpoint(cls, settings, image_size: int, data=None, media_type: Optional[str] = None) -> "MediaSettings":
        """A checkpoint's media settings at its vision tower's input size, with overrides.

        Args:
            settings: the checkpoint's CheckpointSettings (sampling, aspect mode, mean/std).
            image_size: the vision tower's input size (resize and crop target).
            data: a DataConfig whose non-null keys replace the checkpoint's (media_type,
                num_frames, splice_single_frame, image_aspect_ratio, decoder).
            media_type: the default media type when data does not name one.
        """
        def pick(key: str, default):
            value = getattr(data, key, None) if data is not None else None
            return default if value is None else value

        return cls(media_type=pick("media_type", media_type or settings.media_type),
                   num_frames=pick("num_frames", settings.num_frames),
                   splice_single_frame=pick("splice_single_frame", settings.splice_single_frame),
                   image_size=image_size, crop_size=image_size, image_mean=tuple(settings.image_mean),
                   image_std=tuple(settings.image_std),
                   image_aspect_ratio=pick("image_aspect_ratio", settings.image_aspect_ratio),
                   decoder=pick("decoder", "auto"))

    def output_key(self) -> dict:
        """The fields that shape the output tensor (used in the content hash); limits excluded."""
        return {k: getattr(self, k) for k in OUTPUT_FIELDS}
