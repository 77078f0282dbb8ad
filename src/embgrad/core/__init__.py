"""The algorithm, written once and framework-free: capture, one backward, probe, sparse rows."""
