"""Images before any model sees them: which files are images (`names`), the class folders
(`discovery`), the split (`split`), and decoding one file (`decoding`) or many (`batches`).

Everything but `batches` is free of TensorFlow, so the CLI and discovery stay light.
"""
