"""videoneva.runtime."""
