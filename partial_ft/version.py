"""The package version: a leaf, so that modules recording it (deltas, summaries) need not import the package root."""
__version__ = "0.1.0"
