"""What to run and how to measure it: presets, cases, correctness, timing, profiling, the runner."""
