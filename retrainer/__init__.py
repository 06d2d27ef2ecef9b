"""retrainer: transfer-learning image retrainer (retrain.py + label_image.py, offline and fast).

Layers, lowest first: `io` (storage, atomic files), `data` (discovery, split, decoding) and
`formats` (model files), `extractors` and `engines` (the network, at a precision), `cache` (the
bottleneck stage and its vectors), `training`, `audit` and `reports`, `classify` and `exports`,
then `pipeline` (the one place that wires the stages) and `cli` (thin click front-ends; nothing
below it imports click). docs/architecture.md walks through them.
"""

__version__ = "0.1.0"
