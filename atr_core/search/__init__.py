"""Search: exact and approximate nearest neighbours over retrieval vectors, and the Searcher API."""

from atr_core.search.searcher import AnnSpec, ExactIndex, Hit, Searcher, build_index

__all__ = ["AnnSpec", "ExactIndex", "Hit", "Searcher", "build_index"]
