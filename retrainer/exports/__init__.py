"""Export stage: one module per artifact, behind `run.Exporter`.

`classifier` is what every export contains (extractor + head, labels); `graph` writes the frozen
GraphDef with its `.meta.json` sidecar, `saved_model` the SavedModel, `tflite` and `onnx` their
files in each quantization mode (`quantization`); `verify` runs each artifact on the test split for
the export report. `options.ExportOptions` is the stage's view of the flags.
"""
