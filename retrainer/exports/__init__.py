"""Export stage: one module per artifact.

`classifier` is what every export contains (extractor + head, labels); `graph` writes the frozen
GraphDef with its `.meta.json` sidecar, `saved_model` the SavedModel.
"""
