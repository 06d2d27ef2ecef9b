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

__all__ = [
    "ExtractorSpec",
    "FeatureExtractor",
    "create_extractor",
    "list_extractors",
    "register_extractor",
    "register_resolver",
]
