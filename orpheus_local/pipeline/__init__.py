"""The pipeline: the Synthesizer facade, a request's parts and their guards."""
