"""What the audit stage does: `RetrainConfig.audit`, checked when it is built.

Free of TensorFlow and numpy, so that the config (and `retrain --help`) can build it.
"""

from __future__ import annotations

import dataclasses

from retrainer.errors import UsageError
from retrainer.io.storage import AnyPath


@dataclasses.dataclass(frozen=True)
class AuditOptions:
    """The dataset audit (docs/audit.md): on unless --skip_audit.

    Attributes:
        enabled: not --skip_audit.
        audit_file: where audit.json goes.
        keep_duplicates_in_one_split: move each duplicate group into its first member's split.
        bottleneck_dir: the cache root (the audit caches its findings there).
        seed: the run's seed (cross-validated label checks).
        validation_percentage, testing_percentage: the split the balance warnings judge.

    Raises:
        UsageError: --keep_duplicates_in_one_split with --skip_audit.
    """

    enabled: bool
    audit_file: AnyPath
    keep_duplicates_in_one_split: bool
    bottleneck_dir: AnyPath
    seed: int
    validation_percentage: float
    testing_percentage: float

    def __post_init__(self) -> None:
        if self.keep_duplicates_in_one_split and not self.enabled:
            raise UsageError("--keep_duplicates_in_one_split needs the audit; drop --skip_audit.")
