"""User-facing error types: the CLI prints these without a traceback and exits non-zero."""


class VideoNevaError(Exception):
    """Base class for errors caused by user input (bad config, media, checkpoint, prompt).

    Anything else that escapes is a bug and keeps its traceback.
    """


class ConfigError(VideoNevaError, ValueError):
    """A config key is unknown or has a bad value; the message names the key and valid choices."""


class MediaError(VideoNevaError):
    """A media file is missing, unreadable, outside the media root, or cannot be decoded."""


class CheckpointError(VideoNevaError):
    """A checkpoint directory or archive is incomplete, of an unknown kind, or inconsistent."""


class PromptError(VideoNevaError):
    """A prompt line is malformed, or the rendered prompt does not fit the model's context."""
