"""Text in: read and clean corpora, tokenize them, store tokens as memory-mapped files."""

from fissure.text.corpus import Document, builtin_corpus, deduplicate, read_documents, split_documents
from fissure.text.dataset import TokenFile, write_tokens
from fissure.text.tokenizers import (EOS_TOKEN, BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer,
                                     train_bpe)

__all__ = ["Document", "builtin_corpus", "deduplicate", "read_documents", "split_documents", "TokenFile",
           "write_tokens", "EOS_TOKEN", "BPETokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer", "train_bpe"]
