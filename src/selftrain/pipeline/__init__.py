"""Recipes: each a short script over tasks, models, sampling, preference, training, evaluation."""
