"""The data sources: the controlled experiment's synthetic batch (``synthetic``) and word-level
WikiText-2 for the language model (``wikitext``, with its shipped valid and test splits)."""

from .synthetic import make_data

__all__ = ["make_data"]
