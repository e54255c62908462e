"""The `orpheus-local` command: serve, synth, fetch-weights, bench. The one place that may import the
library, the server and the benchmarks together."""
