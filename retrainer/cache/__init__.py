"""The bottleneck vector cache under --bottleneck_dir: its entries and packs, the shard runs
written by `retrain-extract`, and the bottleneck stage that fills and reads them (`bottlenecks`).
"""
