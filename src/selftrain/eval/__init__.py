"""Scoring models: generative accuracy (generative.py), log-likelihood (loglik.py), many
tasks at once (suite.py, `selftrain eval`)."""
