"""Benchmarks: every figure the README quotes comes from one of these scripts.

Run each from the repository root as a module, ``python -m benchmarks.NAME [--help]``; it
prints its figures and writes ``benchmarks/results/NAME.json`` (with the machine's cores and
load) through :mod:`benchmarks._common`. :mod:`benchmarks.harness` holds the fault-injection
harness the reliability tests share. Nothing here imports from ``tests/``.
"""
