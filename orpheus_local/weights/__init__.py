"""Checkpoints: finding, fetching and checking them, and random-weight stand-ins in their layout."""
