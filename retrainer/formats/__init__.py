"""Model files that retrainer writes and reads back: the exported graph's contract
(`graph_contract`), an extractor's (`extractor_spec`), frozen-graph loading (`frozen_graph`),
TFLite conversion and the interpreter (`tflite`), TFLite metadata (`tflite_metadata`) and
flatbuffer fields (`flatbuffer_fields`). Below `exports`, `classify` and `security`.
"""
