"""The package version: in every cache key and every report header (CHANGELOG.md, one section each)."""

__version__ = "0.2.0"
