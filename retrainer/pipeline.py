"""The retrain pipeline: discover/split -> extractor -> bottlenecks -> train -> evaluate -> export.

`run(config)` wires the stages together and returns a `RetrainResult`. TensorFlow and the stage
modules are imported inside `run`, so importing this module stays instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any

from retrainer._output_paths import check_output_paths, remove_stale_export_temporaries
from retrainer.config import RetrainConfig
from retrainer.errors import ExportFailedError, FinishedRunError, QualityGateError
from retrainer.result import RetrainResult
from retrainer.split import TESTING, TRAINING, VALIDATION

log = logging.getLogger(__name__)


def run(config: RetrainConfig) -> RetrainResult:
    """Retrain a classifier on `config.image_dir` and export it.

    Returns:
        RetrainResult with metrics, counts, skipped files and output paths.

    Raises:
        UsageError: bad paths (checked before the long work), unknown extractor.
        DataError: fewer than two classes, no decodable training images.
        ModelError: the extractor cannot be loaded.
        QualityGateError: a gate failed; nothing was exported, the reports were written.
        ExportMismatchError: an export lost more than --max_export_accuracy_drop points; all
            was written.
        Both carry the run's result as `.result`.
    """
    # Imported here so that reading RetrainConfig (e.g. `retrain --help`) does not load TensorFlow.
    from retrainer.audit.report_section import audit_sections
    from retrainer.bottlenecks import DEFAULT_BATCH_SIZE, compute_bottlenecks
    from retrainer.discovery import discover_images
    from retrainer.engines import create_engine
    from retrainer.evaluate import evaluate_head, validation_probabilities
    from retrainer.explain.gradcam import explainable
    from retrainer.exports.deployable import (
        check_calibration_supply,
        check_export_accuracy,
        verify_exports,
    )
    from retrainer.exports.run_exports import RunExports
    from retrainer.extractors import create_extractor
    from retrainer.extractors.tfhub import check_extractor_module
    from retrainer.reports.gates import failure_message
    from retrainer.reports.held_outputs import HeldOutputs
    from retrainer.reports.metrics_file import build_run_report, report_paths
    from retrainer.reports.writer import write_reports
    from retrainer.split_features import SplitFeatures
    from retrainer.training.head import train_head
    from retrainer.training.image_modes import (
        check_fine_tunable,
        distortions_of,
        fine_tune_if_asked,
        fine_tuning_summary,
        training_features,
        training_options,
    )

    timer = _StageTimer()
    check_extractor_module(config.tfhub_module, config.trust_model)  # before anything is written
    check_output_paths(config)  # before the long work
    remove_stale_export_temporaries(config)
    with timer("discover"):
        collection = discover_images(
            config.image_dir, config.validation_percentage, config.testing_percentage
        )
    search = None
    if config.search:
        from retrainer.training.search import search as search_configurations

        with timer("search"):
            search = search_configurations(config, collection)
        config = dataclasses.replace(config, **search.rows[search.chosen].settings)
    check_calibration_supply(config, collection)
    with timer("extractor"):
        extractor = create_extractor(config.tfhub_module, config.image_size, config.trust_model)
        engine = create_engine(extractor, config.extractor_precision, config.devices)
    check_fine_tunable(config, extractor)
    with timer("bottlenecks"):
        bottlenecks = compute_bottlenecks(
            [image.path for image in collection.images], engine, config.bottleneck_dir,
            max(DEFAULT_BATCH_SIZE, engine.batch_size),  # several devices: 32 images each
            show_progress=config.show_progress,
        )
    audit = None
    if not config.skip_audit:
        from retrainer.audit.run import DatasetAudit

        with timer("audit"):
            audit = DatasetAudit(collection, bottlenecks, config)
        if config.keep_duplicates_in_one_split:
            collection = audit.keep_groups_in_one_split()
    splits = SplitFeatures(collection, bottlenecks)
    held = HeldOutputs(active=config.has_quality_gates)  # until the gates pass
    exports = RunExports(config, extractor, collection.labels,
                       held.folder(config.intermediate_output_graphs_dir))
    checkpoint = held.folder(config.checkpoint_path.parent) / config.checkpoint_path.name
    with timer("distort", active=distortions_of(config).enabled):
        train_features, distorted = training_features(
            config, extractor, splits.images[TRAINING], splits.features[TRAINING])
    with timer("train"):
        training = train_head(
            train_features, splits.features[VALIDATION], len(collection.labels),
            dataclasses.replace(training_options(config), checkpoint_path=checkpoint),
            exports.store_intermediate,
            config.intermediate_store_frequency,
        )
    with timer("fine_tune", active=config.do_fine_tuning):
        tuning, test_features = fine_tune_if_asked(
            config, extractor, training.head, splits.images, splits.features)
    with timer("evaluate"):
        evaluation = evaluate_head(
            training.head, test_features, len(collection.labels),
            config.test_batch_size, config.seed,
        )
        validation = validation_probabilities(training.head, splits.features[VALIDATION],
                                              splits.images[VALIDATION], extractor, tuning)
    run_report = build_run_report(config, extractor.spec, training.history, evaluation,
                                  validation, splits)
    gate_failure = failure_message(run_report.gates)
    outputs: dict[str, Any] = {}
    report: list = []
    if gate_failure is None:  # a model that fails a gate replaces no previous export
        with timer("export"):
            outputs = exports.write_final(training.head, splits.images[TRAINING],
                                         fine_tuned=tuning is not None)
            held.release()
            report = verify_exports(config, outputs, splits.images[TESTING],
                                    extractor.spec.input_size)
    else:
        held.discard()
    if audit is not None:
        audit_document = audit.write(evaluation, splits.images[TESTING],
                                     splits.features[TESTING].labels)
        outputs["audit_file"] = config.audit_file
    last = training.final
    test_images = splits.images[TESTING]
    heat_maps: list = []
    if config.report_html is not None:
        with timer("explain", active=config.report_explanations > 0
                   and explainable(extractor.spec.name)):
            heat_maps = explanations(config, exports, training.head, extractor.spec,
                                     test_images, evaluation, collection.labels)
    result = RetrainResult(
        labels=collection.labels,
        counts=splits.counts(),
        skipped=tuple(sorted(collection.ignored + splits.unreadable)),
        bottlenecks_computed=bottlenecks.computed,
        bottlenecks_reused=bottlenecks.reused,
        train_accuracy=last.train_accuracy,
        cross_entropy=last.cross_entropy,
        validation_accuracy=last.validation_accuracy,
        validation_count=last.validation_count,
        test_accuracy=evaluation.accuracy,
        test_count=evaluation.count,
        test_per_class={
            label: {"correct": correct, "total": total}
            for label, (correct, total) in zip(collection.labels, evaluation.per_class)
        },
        misclassified=tuple(
            (test_images[position].relpath, collection.labels[predicted])
            for position, predicted in evaluation.misclassified(splits.features[TESTING].labels)
        ),
        outputs={**outputs, **report_paths(config.metrics_file, config.report_html)},
        seconds=timer.seconds(),
        exports=tuple(row.to_json() for row in report),
        best_step=training.best_step,
        head=training.summary(),
        search=None if search is None else search.to_json(),
        distorted=distorted,
        fine_tuning=fine_tuning_summary(config, tuning),
        audit=None if audit is None else audit_document,
        report=run_report,
        extractor_precision=engine.precision,
        extractor_id=engine.spec.id,
        extraction_devices=engine.devices,
    )
    write_reports(result, config.metrics_file, config.report_html, config.summaries_dir,
                  (*heat_maps, *audit_sections(result.audit)) if config.report_html is not None
                  else ())
    try:
        if gate_failure is not None:
            raise QualityGateError(gate_failure)
        if exports.failures:
            raise ExportFailedError("; ".join(exports.failures))
        check_export_accuracy(config, report)
    except FinishedRunError as error:
        error.result = result
        raise
    return result


def explanations(config: RetrainConfig, exports: Any, head: Any, spec: Any, test_images: Any,
                 evaluation: Any, labels: tuple[str, ...]) -> list:
    """The report's heat-map section (none with --report_explanations 0)."""
    if config.report_explanations == 0:
        return []
    from retrainer.graph_contract import INPUT_OP
    from retrainer.reports.explanations import choose_images, explanation_section

    chosen = choose_images(test_images, evaluation, labels, config.report_explanations)
    return [explanation_section(
        lambda: exports.exporter(head).frozen_graph_def(), f"{INPUT_OP}:0",
        f"{config.final_tensor_name}:0", spec.name, spec.input_size, chosen,
        config.report_explanations)]


class _StageTimer:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str, active: bool = True):
        """Time the block as `stage`; an inactive stage (a mode not asked for) is not listed."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if active:
                self._seconds[stage] = time.perf_counter() - started

    def seconds(self) -> dict[str, float]:
        return {**self._seconds, "total": time.perf_counter() - self.started}
