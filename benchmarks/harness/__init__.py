"""Fault-injection harness shared by ``tests/reliability/`` and ``benchmarks/reliability.py``.

``corpus``: the bad and unusual image files and what featurebank must do with each;
``decode``: running and checking one corpus kind, fuzzing decode; ``faults``: SIGKILLs of real
``featurebank embed`` runs and reading the store back. Not a test module: the tests import it,
the benchmarks import it, neither imports the other.
"""
