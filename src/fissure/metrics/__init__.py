"""Metrics: language-model likelihoods, text similarity and diversity, and their uncertainty."""
