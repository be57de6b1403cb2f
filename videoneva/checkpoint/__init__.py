"""videoneva.checkpoint."""
