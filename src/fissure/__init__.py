"""fissure: build, train, decode and diagnose language models.

Deployed language models fail in two ways: *conflicting objectives* (what training
optimises pulls against what the application wants) and *mismatched generalization*
(inputs unlike the training data). fissure makes both measurable.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
