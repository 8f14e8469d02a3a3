"""Typed connection events and where they go."""
