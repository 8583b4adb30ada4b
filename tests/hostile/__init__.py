"""Crafted hostile packages against envbuild env and envbuild image (issue 16)."""
