"""The stages of a retrain run that need TensorFlow, wired in order, each entered once:

    extractor and engine -> [search] -> bottlenecks -> audit -> training (distorted vectors, the
    head, fine-tuning) -> evaluation -> exports -> the result document -> reports (and the
    quality gates' verdict)

`retrainer.pipeline.run` imports this module on a background thread while the TensorFlow-free
preflight runs. Each stage takes its typed view of the configuration (`config.training`,
`config.extraction`, `config.audit`, `config.exports`, `config.reports`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Optional

from retrainer.audit.report_section import audit_sections
from retrainer.audit.run import DatasetAudit
from retrainer.cache.bottlenecks import DEFAULT_BATCH_SIZE, compute_bottlenecks
from retrainer.cache.file_index import FileIndex
from retrainer.config import RetrainConfig
from retrainer.data.collection import ImageCollection
from retrainer.data.split import TESTING, TRAINING, VALIDATION
from retrainer.engines.base import INT8, Engine
from retrainer.errors import ExportFailedError, ExportMismatchError, QualityGateError
from retrainer.exports.options import AUTO_TTA, NO_TTA
from retrainer.exports.run import Exported, Exporter
from retrainer.formats.extractor_spec import ExtractorSpec
from retrainer.io.storage import AnyPath
from retrainer.pipeline._background import TensorFlowLoad
from retrainer.pipeline.ahead import Ahead, mirror_positions, start_mirroring
from retrainer.pipeline.explaining import Explanations
from retrainer.pipeline.extraction import Extraction, prepare_extraction
from retrainer.pipeline.multi_label import (
    MultiLabelEvaluation,
    evaluate_multi_label,
    label_hits,
    top1_metrics,
    wrong_label_sets,
)
from retrainer.pipeline.split_features import SplitFeatures
from retrainer.pipeline.timer import StageTimer
from retrainer.reports.gates import check_gates, failure_message
from retrainer.reports.held_outputs import HeldOutputs
from retrainer.reports.html import Section
from retrainer.reports.metrics import SplitMetrics, split_metrics
from retrainer.reports.painter import Painter
from retrainer.reports.writer import draw_pictures, write_metrics_file, write_reports
from retrainer.result import MisclassifiedImage, RetrainResult, headline_split
from retrainer.training.checkpoint import written_without_tensorflow
from retrainer.training.evaluate import Evaluation, evaluate_head
from retrainer.training.head import train_head
from retrainer.training.head_types import FeatureSet, Head, TrainingResult
from retrainer.training.image_modes import (
    distortions_of,
    fine_tuning_summary,
    training_options,
)
from retrainer.training.novelty import fit_run_novelty, novelty_summary
from retrainer.training.options import TrainingOptions
from retrainer.training.tta import MirroredSample, TtaChoice, choose_tta, mirrored_sample

if TYPE_CHECKING:  # fine-tuning loads TensorFlow
    from retrainer.training.fine_tune import FineTuneResult


def run_stages(config: RetrainConfig, collection: ImageCollection, file_index: FileIndex,
               timer: StageTimer, tensorflow: TensorFlowLoad, painter: Painter) -> RetrainResult:
    """Run every stage after the preflight (see `retrainer.pipeline.run`) on its `collection`,
    whose `file_index` has been looked up; `tensorflow` is loaded for the stages that need it,
    `painter` draws the report's pictures (closed here).

    Raises:
        As `retrainer.pipeline.run`.
    """
    with Ahead() as ahead, painter:  # work started ahead is joined (stopped early on an error)
        return _run_stages(config, collection, file_index, timer, tensorflow, ahead, painter)


def _run_stages(config: RetrainConfig, collection: ImageCollection, file_index: FileIndex,
                timer: StageTimer, tensorflow: TensorFlowLoad, ahead: Ahead,
                painter: Painter) -> RetrainResult:
    if needs_tensorflow(config):
        tensorflow.start()  # the modes that always run it: loaded while the vectors are read
    extraction = prepare_extraction(config, timer, tensorflow.ready)
    search = None
    if config.search:  # the chosen extractor and distortions replace the flags' (docs/training.md)
        tensorflow.ready()
        from retrainer.pipeline.search import search as search_configurations

        with timer("search"):
            search = search_configurations(config, collection)
        config = dataclasses.replace(config, **search.rows[search.chosen].settings)
        extraction = prepare_extraction(config, timer, tensorflow.ready)
    if not written_without_tensorflow(extraction.spec.vector_size, len(collection.labels)):
        tensorflow.start()  # the head's checkpoint: loaded while the vectors are computed
    engine = extraction.engine
    with timer("bottlenecks"):
        bottlenecks = compute_bottlenecks(
            collection.paths(), engine,
            config.extraction.bottleneck_dir,
            max(DEFAULT_BATCH_SIZE, engine.batch_size),  # several devices: 32 each
            show_progress=config.extraction.show_progress,
            file_index=file_index,
            signatures=config.audit.enabled,  # the audit's, from the same decode
            mirrored=mirror_positions(config, collection),  # --tta auto's, from the same decode
        )
    extraction.remember()
    mirrored = start_mirroring(ahead, config, engine, collection, bottlenecks)  # beside the audit
    bottlenecks = dataclasses.replace(bottlenecks, mirrored={})  # the sample's now
    audit = None
    if config.audit.enabled:
        with timer("audit"):
            audit = DatasetAudit(config.audit, collection, bottlenecks)
        collection = audit.collection  # duplicates regrouped, when asked
        # the thumbnails are the audit's alone: 1 GB at a million images, freed for training
        bottlenecks = dataclasses.replace(bottlenecks, signatures=None)
    splits = SplitFeatures(collection, bottlenecks, config.training.multi_label)
    held = HeldOutputs(active=config.reports.has_quality_gates)  # until the gates pass
    exporter = Exporter(config.exports, extraction.spec, extraction.extractor, collection.labels,
                        held.folder(config.exports.intermediate_output_graphs_dir),
                        config.extraction.bottleneck_dir, tensorflow.ready)
    if engine.precision == INT8:  # the heat maps' map: from the model that made the vectors
        exporter.engine_model = engine.model_path
    trained = _train_and_evaluate(config, extraction, splits, exporter, held, timer)
    with timer("novelty"):
        novelty = fit_run_novelty(splits, extraction.extractor() if trained.tuning else None,
                                  trained.tuning, config.training.novelty_pass_rate,
                                  config.training.seed,
                                  (config.extraction.bottleneck_dir, engine.spec.id))
    tta = None
    if config.exports.tta == AUTO_TTA:
        with timer("tta"):
            tta = _choose_tta(config, engine, trained, splits,
                              collection.paths(splits.images[VALIDATION]), mirrored)
        exporter.tta = tta.mode
    explanations = Explanations(config, exporter, extraction.spec, trained.head.head,
                                trained.evaluation, splits, tensorflow)
    if exporter.needs_tensorflow(trained.head.head, novelty, trained.tuning is not None,
                                 explanations.explained):
        tensorflow.start()  # loaded while the evaluation and the pictures are made
    measured = trained.measured
    test_metrics, validation_metrics = measured.test, measured.validation
    misclassified, per_class, multi_label = (measured.misclassified, measured.per_class,
                                             measured.multi_label)
    with timer("evaluate"):
        headline = headline_split(test_metrics, validation_metrics)
        gates = check_gates(config.reports.assert_accuracy_at_least,
                            config.reports.assert_recall_at_least, *headline, collection.labels,
                            None if multi_label is None else
                            multi_label.test if headline[0] == TESTING else multi_label.validation)
    gate_failure = failure_message(gates)
    # matplotlib draws the report's pictures meanwhile, in the painter's process
    pictures = painter.draw(draw_pictures, config.reports, collection.labels,
                              trained.head.history, trained.head.summary()["solver"],
                              *headline, config.extraction.bottleneck_dir)
    exported = Exported({})
    if gate_failure is None:  # a model that fails a gate replaces no previous export
        with timer("export"):
            exported = exporter.write_all(trained.head.head, splits.images[TRAINING],
                                          splits.images[TESTING],
                                          fine_tuned=trained.tuning is not None,
                                          novelty=novelty,
                                          thresholds=None if multi_label is None
                                          else multi_label.thresholds)
            held.release()
    else:
        held.discard()
    heat_maps: list[Section] = []
    if config.reports.report_html is not None:
        with timer("explain", active=explanations.explained):
            heat_maps = explanations.section()
    audit_document = None
    if audit is not None:
        with timer("reports"):
            audit_document = audit.write(trained.evaluation, splits.images[TESTING])
    result = RetrainResult(
        labels=collection.labels,
        counts=splits.counts(),
        skipped=tuple(sorted(collection.ignored + splits.unreadable)),
        bottlenecks_computed=bottlenecks.computed,
        bottlenecks_reused=bottlenecks.reused,
        train_accuracy=trained.head.final.train_accuracy,
        cross_entropy=trained.head.final.cross_entropy,
        validation_accuracy=trained.head.final.validation_accuracy,
        validation_count=trained.head.final.validation_count,
        test_accuracy=(trained.evaluation.accuracy if multi_label is None
                       else test_metrics.accuracy),  # multi-label: top-1 is one of the labels
        test_count=trained.evaluation.count,
        test_per_class={label: {"correct": correct, "total": total}
                        for label, (correct, total) in zip(collection.labels, per_class)},
        misclassified=misclassified,
        outputs=_outputs(config, exported, audit is not None, gate_failure is None),
        seconds=timer.seconds(),  # final figures replace these once the reports are written
        peak_memory_gib=timer.peak_memory_gib(),
        exports=tuple(row.to_json() for row in exported.report),
        best_step=trained.head.best_step,
        head=trained.head.summary(),
        search=None if search is None else search.to_json(),
        tta=None if tta is None else tta.to_json(),
        distorted=trained.distorted,
        fine_tuning=fine_tuning_summary(config.training, trained.tuning),
        audit=audit_document,
        extractor_precision=engine.precision,
        extractor_id=engine.spec.id,
        extraction_devices=engine.devices,
        history=trained.head.history,
        test_metrics=test_metrics,
        validation_metrics=validation_metrics,
        extractor=_extractor_json(extraction.spec),
        flags=config.to_json(),
        quality_gates=gates,
        novelty=novelty_summary(novelty, trained.test_features),
        multi_label=multi_label,
        split_sizes={split: len(images) for split, images in splits.images.items()},
    )
    with timer("reports"):
        write_reports(result, config.reports, [*heat_maps, *audit_sections(audit_document)]
                      if config.reports.report_html is not None else [], pictures(),
                      metrics_file=False)
        result = dataclasses.replace(result, seconds=timer.seconds(),
                                     peak_memory_gib=timer.peak_memory_gib())
        write_metrics_file(result, config.reports)  # last: the document run() returns
    export_failure = exported.accuracy_drop_failure(config.exports.max_export_accuracy_drop)
    if gate_failure is not None:
        raise QualityGateError(gate_failure, result)
    if exported.failures:
        raise ExportFailedError("; ".join(exported.failures), result)
    if export_failure is not None:
        raise ExportMismatchError(export_failure, result)
    return result


@dataclasses.dataclass(frozen=True)
class _Trained:
    """What the training stage hands on: the head, fine-tuning's outcome and the evaluation."""

    head: TrainingResult
    tuning: Optional[FineTuneResult]
    distorted: Optional[dict[str, Any]]  # the distorted vectors' summary; None without them
    evaluation: Evaluation  # its probabilities dropped once measured (`_evaluate`)
    measured: _Measured
    test_features: FeatureSet  # the vectors the evaluation used (re-extracted after tuning)


@dataclasses.dataclass(frozen=True)
class _Measured:
    """The evaluation's figures on both held-out splits, made from the head's probabilities."""

    test: SplitMetrics
    validation: SplitMetrics
    misclassified: tuple[MisclassifiedImage, ...]
    per_class: tuple[tuple[int, int], ...]  # (correct, total) per class (label: with it)
    multi_label: Optional[MultiLabelEvaluation]


def needs_tensorflow(config: RetrainConfig) -> bool:
    """Whether the run's flags ask for work that always runs TensorFlow: the SGD head, distorted
    vectors, fine-tuning, --search, the SavedModel, TFLite and ONNX conversions, intermediate
    graphs, a sampled test split."""
    training, exports = config.training, config.exports
    return (training.solver != "lbfgs" or distortions_of(training).enabled
            or training.do_fine_tuning or config.search or exports.saved_model_dir is not None
            or bool(exports.tflite_files) or bool(exports.onnx_files)
            or exports.intermediate_store_frequency > 0 or training.test_batch_size != -1)


def _choose_tta(config: RetrainConfig, engine: Engine, trained: _Trained, splits: SplitFeatures,
                paths: list[str | AnyPath],
                mirrored: Callable[[list[str | AnyPath]], Optional[MirroredSample]]) -> TtaChoice:
    """--tta auto's choice (training/tta.py), checked on the cached validation vectors (of the
    images at `paths`); not for multi-label heads or a fine-tuned extractor (whose vectors are no
    longer the cache's). `mirrored(paths)`: the sample drawn ahead, if drawn from these images."""
    if config.training.multi_label or trained.tuning is not None:
        return TtaChoice(NO_TTA, 0, 0.0, 0.0, 0.0)
    validation = splits.features[VALIDATION]
    sample = mirrored(paths) or mirrored_sample(engine, paths, config.training.seed,
                                                config.extraction.bottleneck_dir)
    return choose_tta(trained.head.head, sample, validation.features, validation.labels)


def _train_and_evaluate(config: RetrainConfig, extraction: Extraction, splits: SplitFeatures,
                        exporter: Exporter, held: HeldOutputs, timer: StageTimer) -> _Trained:
    """Distorted vectors (if asked), the head, fine-tuning (if asked), then the evaluation."""
    options = config.training
    checkpoint = held.folder(options.checkpoint_path.parent) / options.checkpoint_path.name
    num_classes = len(splits.labels)
    train_features, distorted = splits.features[TRAINING], None
    with timer("distort", active=distortions_of(options).enabled):
        if distortions_of(options).enabled:
            from retrainer.training.image_modes import training_features

            train_features, distorted = training_features(
                options, extraction.extractor(), splits.images[TRAINING], train_features)
    with timer("train"):
        head = train_head(train_features, splits.features[VALIDATION], num_classes,
                          training_options(options, len(splits.images[TRAINING]), checkpoint),
                          exporter.write_intermediate,
                          config.exports.intermediate_store_frequency)
    tuning = None
    held_out = {split: splits.features[split] for split in (VALIDATION, TESTING)}
    with timer("fine_tune", active=options.do_fine_tuning):
        if options.do_fine_tuning:  # the held-out vectors are then re-extracted
            from retrainer.training.image_modes import fine_tune_if_asked

            tuning, held_out = fine_tune_if_asked(
                options, extraction.extractor(), head.head, splits.images, splits.features)
    with timer("evaluate"):
        evaluation, measured = _evaluate(options, head.head, held_out, splits)
    return _Trained(head, tuning, distorted, evaluation, measured, held_out[TESTING])


def _evaluate(options: TrainingOptions, head: Head, held_out: dict[str, FeatureSet],
              splits: SplitFeatures) -> tuple[Evaluation, _Measured]:
    """The head on the test split, and the metrics of both held-out splits (`held_out`: their
    vectors). Each split's float32 [N, C] probabilities (400 MB at 100,000 images of 1,000
    classes) are freed once measured, the test split's before the validation split's are made
    (a multi-label run needs both at once); the Evaluation returned keeps none."""
    labels = splits.labels
    evaluation = evaluate_head(head, held_out[TESTING], len(labels), options.test_batch_size,
                               options.seed)
    no_probabilities = evaluation.probabilities[:0].copy()
    if options.multi_label:
        validation = head.probabilities(held_out[VALIDATION].features)
        multi_label = evaluate_multi_label(
            labels, splits.images[TESTING], evaluation.positions, evaluation.probabilities,
            splits.images[VALIDATION], validation, options.multi_label_threshold)
        test_metrics, validation_metrics = top1_metrics(evaluation, validation, splits)
        measured = _Measured(test_metrics, validation_metrics,
                             wrong_label_sets(evaluation, multi_label, splits),
                             label_hits(evaluation, multi_label, splits), multi_label)
        return dataclasses.replace(evaluation, probabilities=no_probabilities), measured
    misclassified = _misclassified(evaluation, splits)
    test_metrics = split_metrics(splits.features[TESTING].labels[evaluation.positions],
                                 evaluation.probabilities, evaluation.positions)
    evaluation = dataclasses.replace(evaluation, probabilities=no_probabilities)  # freed here
    validation_metrics = split_metrics(splits.features[VALIDATION].labels,
                                       head.probabilities(held_out[VALIDATION].features))
    return evaluation, _Measured(test_metrics, validation_metrics, misclassified,
                                 evaluation.per_class, None)


def _misclassified(evaluation: Evaluation, splits: SplitFeatures
                   ) -> tuple[MisclassifiedImage, ...]:
    """Each wrong test prediction, in the order the test made them."""
    images, labels = splits.images[TESTING], splits.labels
    truth = splits.features[TESTING].labels[evaluation.positions]
    return tuple(
        MisclassifiedImage(
            relpath=images[evaluation.positions[row]].relpath,
            path=images[evaluation.positions[row]].path,
            true_label=labels[truth[row]],
            predicted_label=labels[evaluation.predictions[row]],
            score=float(evaluation.probabilities[row, evaluation.predictions[row]]),
        )
        for row in (evaluation.predictions != truth).nonzero()[0]
    )


def _outputs(config: RetrainConfig, exported: Exported, audited: bool,
             trained_outputs: bool) -> dict[str, Any]:
    """{output name: path} of everything the run wrote, in the order the summary lists them."""
    written = dict(exported.outputs)
    outputs: dict[str, Any] = {name: written.pop(name) for name in (
        "output_graph", "output_graph_metadata", "output_labels") if name in written}
    if trained_outputs:  # held back (and then discarded) when a gate failed
        outputs.update(summaries_dir=config.training.summaries_dir,
                       checkpoint_path=config.training.checkpoint_path)
    outputs.update(written)
    if audited:
        outputs["audit_file"] = config.audit.audit_file
    return {**outputs, **config.reports.paths}


def _extractor_json(spec: ExtractorSpec) -> dict[str, Any]:
    """The extractor as the document describes it (its own spec, not its engine's)."""
    return {"name": spec.name, "id": spec.id, "input_size": list(spec.input_size),
            "vector_size": spec.vector_size}

