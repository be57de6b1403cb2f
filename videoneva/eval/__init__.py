"""videoneva.eval."""
