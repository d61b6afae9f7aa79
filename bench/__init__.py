"""Benchmarks (not tests): akisnap create/restore side by side with bare pyarrow, NumPy and Lance.

Run with ``python -m bench`` (``make bench``); ``--quick`` for a smoke run, ``--scenario NAME``
to run one scenario. See :mod:`bench.cli`.
"""
