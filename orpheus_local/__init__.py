"""orpheus-local, the library: text -> 24 kHz PCM with the Orpheus 3B model."""
