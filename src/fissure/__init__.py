"""fissure: build, train, decode and diagnose language models.

Deployed language models fail in two ways: *conflicting objectives* (what training optimises
pulls against what the application wants) and *mismatched generalization* (inputs unlike the
training data). fissure makes both measurable.

    >>> import fissure
    >>> lm = fissure.load("smollm2")
    >>> lm.generate(["The capital of France is"], fissure.Decoding(max_new_tokens=8))
"""

from ._version import __version__


def __getattr__(name):  # lazy: `import fissure` stays cheap for the CLI's --help
    if name == "load":
        from .backends import load

        return load
    if name == "Decoding":
        from .decode import Decoding

        return Decoding
    if name == "pipeline":
        from .pipelines import pipeline

        return pipeline
    raise AttributeError(f"module 'fissure' has no attribute '{name}'")


__all__ = ["__version__", "load", "Decoding", "pipeline"]
