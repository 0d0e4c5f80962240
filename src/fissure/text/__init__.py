"""Text in: read and clean corpora, tokenize them, store tokens as memory-mapped files.

The names below are imported on first use, so that reading text (``fissure data list``) does not
import torch, which only the token files need.
"""

import importlib

_EXPORTS = {
    "catalogue": ["Domain", "DomainStats", "domain_stats", "domains", "get_domain", "load_domain", "register_domain"],
    "corpus": ["Document", "builtin_corpus", "deduplicate", "read_documents", "split_documents"],
    "dataset": ["TokenFile", "write_tokens"],
    "tokenizers": ["EOS_TOKEN", "BPETokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer", "train_bpe"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'fissure.text' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"fissure.text.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


__all__ = list(_MODULE_OF)
