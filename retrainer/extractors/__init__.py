"""Feature extractors behind one interface (`FeatureExtractor`) and one constructor.

Importing this package registers the built-ins.
"""

# Built-ins register themselves on import (keep this list in sync with the modules).
from retrainer.extractors import (  # noqa: F401
    efficientnet_lite,
    keras_apps,
    tfhub,
)
from retrainer.extractors.base import ExtractorSpec, FeatureExtractor
from retrainer.extractors.registry import (
    create_extractor,
    list_extractors,
    register_extractor,
    register_resolver,
)

# The public name (README); the same value as retrainer.config.DEFAULT_EXTRACTOR, which the flags
# use and which cannot import this TensorFlow-loading package (tests/test_extractors.py: equal).
DEFAULT_EXTRACTOR = "efficientnet_lite0"

__all__ = [
    "DEFAULT_EXTRACTOR",
    "ExtractorSpec",
    "FeatureExtractor",
    "create_extractor",
    "list_extractors",
    "register_extractor",
    "register_resolver",
]
