"""Benchmarks for vast-dispatcher: ``python -m bench`` (``--smoke`` for a quick check).

Every run starts its own redis-server, Vast emulator and Celery workers, measures each
scenario, prints a table and writes ``bench/results/latest.json``. Ratios are always
between figures measured in the same run.
"""
