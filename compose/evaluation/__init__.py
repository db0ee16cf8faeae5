"""Measuring a model: the evaluation, metrics, paired comparison with the baseline, latency and
throughput, the run report, and the comparison of finished runs."""
