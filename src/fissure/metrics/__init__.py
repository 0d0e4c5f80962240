"""Metrics: language-model likelihoods, text similarity and diversity, classification and calibration, and their uncertainty."""
