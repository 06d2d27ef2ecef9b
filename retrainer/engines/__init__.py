"""Engines that run an extractor at a chosen precision; `factory.create_engine` builds them.

    engine = create_engine(create_extractor("efficientnet_lite0"), "int8")
    vectors = engine(uint8_pixels)        # float32 [N, 1280]
    engine = create_engine(extractor, "float32", parse_devices("GPU:0,GPU:1"))  # batch split

One module per precision (`float32`, `bfloat16`, `int8`), `multi_device` for batches split across
devices. This package's face is free of TensorFlow: the config reads the precisions and parses
`--extraction_devices` from here, so `retrain --help` stays instant.
"""

from retrainer.engines.base import AUTO, BFLOAT16, FLOAT32, INT8, PRECISIONS, Engine
from retrainer.engines.devices import AUTO_DEVICES, parse_devices

__all__ = ["AUTO", "AUTO_DEVICES", "BFLOAT16", "FLOAT32", "INT8", "PRECISIONS", "Engine",
           "parse_devices"]
