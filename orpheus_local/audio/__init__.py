"""Audio: SNAC decoding in streaming windows with seeded noise, the codec worker, crossfades, encoders."""
