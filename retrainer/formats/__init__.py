"""Model files that retrainer writes and reads back: the exported graph's contract
(`graph_contract`), frozen-graph loading (`frozen_graph`), TFLite conversion and the interpreter
(`tflite`), and TFLite metadata (`tflite_metadata`). Below both `exports` and `classify`.
"""
