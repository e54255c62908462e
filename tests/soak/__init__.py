"""Load and soak tooling: a load generator and a demo server process, shared by the CI tests
(tests/test_load.py, tests/test_faults.py) and the hand-run soak script (run.py)."""
