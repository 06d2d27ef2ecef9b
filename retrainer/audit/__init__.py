"""Audit stage: checks the dataset on every run, from the vectors and files already at hand.

Exact and near-duplicates (leaks across splits), likely mislabeled images, outliers, class
imbalance and thin splits, written to `audit.json` (schema: docs/audit.md). `run.DatasetAudit` is
the stage; `summary.audit_summary_lines` the end-of-run text (light: no numpy import).
"""
