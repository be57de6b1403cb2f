"""videoneva.train."""
