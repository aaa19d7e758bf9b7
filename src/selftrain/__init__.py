"""selftrain: distil chain-of-thought into a small student, then let it improve itself."""

__version__ = "0.1.0"
