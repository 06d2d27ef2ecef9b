"""Shared test set-up. Fixture modules are owned per area and listed here."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = [
    "tests.fixtures_extractors",
    "tests.fixtures_data",
    "tests.fixtures_hub",
    "tests.fixtures_label_image",
    "tests.fixtures_pipeline",
    "tests.fixtures_faults",
    "tests.fixtures_exports",
]
