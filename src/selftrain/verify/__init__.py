"""Judging a model's final answer against the ground truth: numbers, choices, math."""
