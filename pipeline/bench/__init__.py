"""``make bench``: every figure measured side by side with its baseline in the same run.

These machines are noisy, so each entry is a ratio against a baseline timed in the same process
minutes apart, never an absolute number compared across runs. Entries follow one schema
(:class:`~pipeline.bench.results.Entry`) and land in ``bench/results.json``.
"""
