"""Reporting stage: metrics, plots, the HTML report and quality gates, from a run's result.

One module per concern: `metrics` (pure numpy), `plots` (matplotlib, Agg), `html` + `sections` (the
self-contained report), `explanations` (its heat maps), `gates` (`--assert_*_at_least`),
`held_outputs` (files held back until the gates pass), `writer` (the metrics file, the report and a
TensorBoard image, all written at the end of a run from `retrainer.result.RetrainResult`),
`painter` (a helper process that imports matplotlib on an idle core and draws the pictures).
"""
