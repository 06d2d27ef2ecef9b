"""The machine underneath every stage: local and remote storage (`storage`), atomic writes
(`atomic`) and what the host offers the process (`host`). Imports no TensorFlow until a URL is used.
"""
