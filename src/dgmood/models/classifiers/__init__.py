"""Classifiers for the max-softmax family of OOD baselines."""
