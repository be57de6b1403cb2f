"""videoneva.media: media sources (folder/.tar), video/image decoders, frame selection, CLIP preprocessing."""
try:  # PyAV must load its FFmpeg before decord's bundled one, or PyAV's VP9 encoder fails to open.
    import av  # noqa: F401
except ImportError:  # PyAV is optional at run time (only tests and demo-data write videos)
    pass
