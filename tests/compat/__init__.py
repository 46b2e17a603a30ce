"""Compatibility with the old service's clients."""
