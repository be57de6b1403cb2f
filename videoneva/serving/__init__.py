"""videoneva.serving."""
