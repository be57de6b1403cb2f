"""videoneva.demo."""
