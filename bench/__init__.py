"""Benchmarks: throughput on the CPU (bundled models) and on one GPU (SD 1.5-sized random models)."""
