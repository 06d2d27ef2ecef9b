"""Reporting stage: metrics, the metrics JSON file, plots, the HTML report and quality gates.

One module per concern: `metrics` (pure numpy), `metrics_file` (the `--metrics_file` / `--json`
document), `plots` (matplotlib, Agg), `html` + `sections` (the self-contained report), `gates`
(`--assert_*_at_least`), `writer` (writes them all at the end of a run).
"""
