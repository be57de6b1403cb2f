"""videoneva.model."""
