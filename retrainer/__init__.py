"""retrainer: transfer-learning image retrainer (retrain.py + label_image.py, offline and fast).

Stages, each its own module, data flowing one way:
discovery/split -> bottlenecks (cached features) -> train (softmax head) -> evaluate -> export.
The `cli` package is a thin click layer on top; nothing below it imports click.
"""

__version__ = "0.1.0"
