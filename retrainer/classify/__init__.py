"""Classification stage (`label-image`): an exported model + image files -> top-k labels each.

`run.classify_images(ClassifyConfig, paths)` is the entry point; `config` holds what the user asks
for (free of TensorFlow, so the CLI reads its defaults for `--help`), and there is one module per
model kind: `frozen_graph` (.pb), `saved_model`, `tflite`, `onnx`; `explained` adds heat maps
(`--explain`).
"""
