"""Feature extractors behind one interface (`FeatureExtractor`) and one constructor.

Importing this package registers the built-ins.
"""

from retrainer.extractors.base import ExtractorSpec, FeatureExtractor
from retrainer.extractors.registry import (
    create_extractor,
    list_extractors,
    register_extractor,
    register_resolver,
)

# Built-ins register themselves on import (keep this list in sync with the modules).
from retrainer.extractors import efficientnet_lite  # noqa: E402,F401
from retrainer.extractors import tfhub, keras_apps  # noqa: E402,F401

__all__ = [
    "ExtractorSpec",
    "FeatureExtractor",
    "create_extractor",
    "list_extractors",
    "register_extractor",
    "register_resolver",
]
