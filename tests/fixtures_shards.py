"""Shard runs written by hand (without Beam), for the reader's tests and poisoned-run checks."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from retrainer.cache.layout import shards_folder
from retrainer.cache.shards import encode_record, write_manifest_then_marker


def write_shard_run(namespace: str, run_id: str, digests: Sequence[str], vectors: np.ndarray,
                    finished: bool = True, shards: int = 2) -> str:
    """A run of `shards` TFRecord files holding (digest, vector) pairs; with its marker if
    `finished`, else as a run killed before it finished (shards there, no manifest or marker).
    Returns the run folder."""
    run_dir = tf.io.gfile.join(shards_folder(namespace), run_id)
    tf.io.gfile.makedirs(run_dir)
    names = [f"vectors-{index:05d}-of-{shards:05d}.tfrecord" for index in range(shards)]
    for index, name in enumerate(names):
        with tf.io.TFRecordWriter(tf.io.gfile.join(run_dir, name)) as writer:
            for digest, vector in list(zip(digests, vectors))[index::shards]:
                writer.write(encode_record(digest, vector))
    if finished:
        write_manifest_then_marker(run_dir, {
            "extractor_id": "test", "extractor": "test", "input_size": [32, 32],
            "vector_size": int(vectors.shape[1]), "shards": names, "vectors": len(digests),
            "already_cached": 0, "unreadable": [],
        })
    return run_dir
