"""The bottleneck vector cache under --bottleneck_dir: its entries and packs, the shard runs
written by `retrain-extract`, the audit's image signatures made in the same decode
(`signatures`), and the bottleneck stage that fills and reads them (`bottlenecks`).
"""
