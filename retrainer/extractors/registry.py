"""Name -> extractor factory registry; `create_extractor` is the only public constructor.

Built-in extractors register themselves with `@register_extractor("name")`. Anything that is not a
registered name goes to the resolvers (TF Hub handles, local SavedModels, Keras applications), which
are tried in registration order.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from retrainer.errors import UsageError
from retrainer.extractors.base import FeatureExtractor


class ExtractorFactory(Protocol):
    def __call__(self, image_size: Optional[int] = ...) -> FeatureExtractor: ...


# A resolver returns an extractor for handles it understands, or None to let the next one try.
# Arguments: handle, image size, trust_model (load a model file without checking it first).
Resolver = Callable[[str, Optional[int], bool], Optional[FeatureExtractor]]

_FACTORIES: dict[str, ExtractorFactory] = {}
_RESOLVERS: list[Resolver] = []


def register_extractor(name: str) -> Callable[[ExtractorFactory], ExtractorFactory]:
    """Decorator registering a factory under `name` (lower-case, no spaces)."""

    def decorate(factory: ExtractorFactory) -> ExtractorFactory:
        if name in _FACTORIES:
            raise ValueError(f"extractor {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return decorate


def register_resolver(resolver: Resolver) -> Resolver:
    """Decorator adding a resolver for handles that are not registered names."""
    _RESOLVERS.append(resolver)
    return resolver


def list_extractors() -> list[str]:
    """Registered built-in names, sorted."""
    return sorted(_FACTORIES)


def create_extractor(name_or_handle: str, image_size: Optional[int] = None,
                     trust_model: bool = False) -> FeatureExtractor:
    """Build the extractor for a registered name, hub handle/URL, or local module path.

    Args:
        name_or_handle: e.g. "efficientnet_lite0".
        image_size: input side length for modules that accept any size; None = the module's own.
        trust_model: load a module without `retrainer.security.check_model` (docs/security.md).

    Raises:
        UsageError: nothing knows `name_or_handle`, or `image_size` conflicts with the module.
        UntrustedModelError: a module that failed the model check.
        ModelError: the module exists but cannot be loaded.
    """
    factory = _FACTORIES.get(name_or_handle)
    if factory is not None:
        return factory(image_size=image_size)
    for resolve in _RESOLVERS:
        extractor = resolve(name_or_handle, image_size, trust_model)
        if extractor is not None:
            return extractor
    raise UsageError(
        f"unknown feature extractor {name_or_handle!r}: expected one of {list_extractors()}"
        + (
            ", keras:<Name> (a keras.applications backbone), a TF Hub URL,"
            " or a local SavedModel / TF Hub module directory"
            if _RESOLVERS
            else ""
        )
    )
