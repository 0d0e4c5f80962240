"""fissure: build, train, decode and diagnose language models.

Deployed language models fail in two ways: *conflicting objectives* (what training optimises
pulls against what the application wants) and *mismatched generalization* (inputs unlike the
training data). fissure makes both measurable.

    >>> import fissure
    >>> lm = fissure.load("smollm2")
    >>> lm.generate(["The capital of France is"], fissure.Decoding(max_new_tokens=8))
"""

import os

from ._version import __version__

# torch's CPU allocator advises huge pages for tensors of 2 MB and more when this is set (NumPy does the
# same by default). Without it, every large tensor made afresh each step (logits, their gradient)
# page-faults its way in 4 KB at a time: on this project's 2-core machines, bf16 training of a
# 6 x 384 GPT ran 2,156-2,539 tokens/s without it and 2,741-2,805 with it (benchmarks/README.md).
# Read by torch at its first allocation; set THP_MEM_ALLOC_ENABLE=0 to keep 4 KB pages.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


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
