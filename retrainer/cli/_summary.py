"""The text `retrain` prints at the end of a run (without --json): one test line, then a summary
of training, images per class and split, per-class metrics, exports and timings."""

from __future__ import annotations

from retrainer.audit.summary import audit_summary_lines
from retrainer.data.split import SPLITS, TESTING
from retrainer.reports.format import percent
from retrainer.result import RetrainResult

_MAX_SKIPPED_SHOWN = 20


def test_line(result: RetrainResult) -> str:
    if result.test_accuracy is None:
        return "Final test accuracy = n/a (no test images)"
    if result.multi_label is not None:
        test = result.multi_label.test
        return (f"Final test micro-F1 = {percent(test.micro_f1)} (N={test.count}; top-1 is one of "
                f"the labels for {result.test_accuracy * 100:.1f}%)")
    return f"Final test accuracy = {result.test_accuracy * 100:.1f}% (N={result.test_count})"


def summary_lines(result: RetrainResult) -> list[str]:
    """The end-of-run summary: training metrics, images per class and split, skipped, outputs."""
    lines = [
        f"Last step: train accuracy = {percent(result.train_accuracy)}, cross entropy = "
        f"{result.cross_entropy:.6f}, validation accuracy = "
        f"{percent(result.validation_accuracy)} (N={result.validation_count})",
        _whole_validation_line(result),
        "",
        "Images used per class:" if result.multi_label is None else
        "Images used per label (an image counts for each of its labels; test found: test images "
        "with the label that got it):",
    ]
    width = max(len("class"), len("images"), *(len(label) for label in result.labels))
    lines.append(f"  {'class' if result.multi_label is None else 'label':<{width}}  "
                 + "  ".join(f"{split:>10}" for split in SPLITS)
                 + ("  test correct" if result.multi_label is None else "    test found"))
    for label in result.labels:
        tested = result.test_per_class[label]
        lines.append(f"  {label:<{width}}  "
                     + "  ".join(f"{result.counts[label][split]:>10}" for split in SPLITS)
                     + f"  {tested['correct']:>5}/{tested['total']}")
    totals = result.images_per_split()
    lines.append(f"  {'total' if result.multi_label is None else 'images':<{width}}  "
                 + "  ".join(f"{totals[split]:>10}" for split in SPLITS))
    lines += ["", *_report_lines(result), *_multi_label_lines(result), *_novelty_lines(result)]
    if result.skipped:
        lines += ["", f"Skipped {len(result.skipped)} files:"]
        lines += [f"  {path}: {reason}" for path, reason in result.skipped[:_MAX_SKIPPED_SHOWN]]
        if len(result.skipped) > _MAX_SKIPPED_SHOWN:
            more = len(result.skipped) - _MAX_SKIPPED_SHOWN
            lines.append(f"  ... and {more} more (all in --json)")
    lines += _training_mode_lines(result)
    if result.search is not None:
        search = result.search
        lines += ["", f"Search ({search['method']}, {search['images']} images; the test split "
                  "was evaluated once, for the chosen configuration):"]
        lines += [f"  {row['name']}: " + (
            row["status"] if row["validation_accuracy"] is None
            else f"{percent(row['validation_accuracy'])} +- {row['standard_error'] * 100:.1f}"
                 f", {row['seconds']:.1f} s")
            + ("  <- chosen" if row["name"] == search["chosen"] else "")
            + ("  (most accurate)" if row["name"] == search["best"] != search["chosen"] else "")
            for row in search["candidates"]]
    lines += _audit_lines(result)
    lines += [
        "",
        f"Bottleneck vectors: {result.bottlenecks_computed} computed, "
        f"{result.bottlenecks_reused} reused from the cache.",
        _took_line(result),
        "Wrote:",
    ]
    for name, value in result.outputs.items():
        paths = value if isinstance(value, list) else [value]
        lines += [f"  {name}: {path}" for path in paths]
    lines += _export_report_lines(result)
    return lines


def _took_line(result: RetrainResult) -> str:
    """The run's wall time, every part named, and its peak memory."""
    parts = ", ".join(f"{part} {seconds:.1f} s" for part, seconds in result.seconds.items()
                      if part != "total")
    peaks = {part: gib for part, gib in result.peak_memory_gib.items()
             if part not in ("total", "other")}
    peak = (f" Peak memory {result.peak_memory_gib['total']:.2f} GiB (during "
            f"{max(peaks, key=peaks.__getitem__)})." if peaks else "")
    return f"Took {result.seconds['total']:.1f} s ({parts}).{peak}"


def _whole_validation_line(result: RetrainResult) -> str:
    """The honest figure: each validation image once (the step lines count sampled draws)."""
    validation = result.validation_metrics
    return (f"Validation accuracy = {percent(validation.accuracy)} (N={validation.count} images, "
            "the whole validation split)")


def _report_lines(result: RetrainResult) -> list[str]:
    """Headline split's accuracies, the per-class table and the most confused pairs."""
    name, split = result.headline()
    if name is None:
        return []
    top_k = f", top-{split.top_k} {percent(split.top_k_accuracy)}" if split.top_k else ""
    where = "test" if name == TESTING else "validation"
    width = max(len("class"), *(len(label) for label in result.labels))
    lines = [f"{where.capitalize()} split: accuracy {percent(split.accuracy)}, balanced "
             f"accuracy {percent(split.balanced_accuracy)}{top_k} (N={split.count})",
             f"Per-class metrics ({where} split):",
             f"  {'class':<{width}}  precision   recall       F1  support"]
    for label, row in zip(result.labels, split.per_class):
        lines.append(f"  {label:<{width}}  {percent(row.precision):>9}  {percent(row.recall):>7}"
                     f"  {percent(row.f1):>7}  {row.support:>7}")
    confused = split.most_confused()
    if confused:
        lines.append("Most confused (true -> predicted): " + "; ".join(
            f"{result.labels[true]} -> {result.labels[predicted]} ({count})"
            for true, predicted, count in confused))
    for gate in result.quality_gates:
        lines.append(f"Quality gate --{gate.flag} {gate.threshold:g}: passed "
                     f"({percent(gate.value)})")
    return lines


def _multi_label_lines(result: RetrainResult) -> list[str]:
    """A multi-label run's test figures and per-label table (with each label's threshold)."""
    evaluation = result.multi_label
    if evaluation is None or not evaluation.test.count:
        return []
    test = evaluation.test
    width = max(len("label"), *(len(label) for label in result.labels))
    lines = [f"Multi-label test split: micro-F1 {percent(test.micro_f1)}, macro-F1 "
             f"{percent(test.macro_f1)}, mAP {percent(test.mean_average_precision)}, exact "
             f"match {percent(test.exact_match)} (N={test.count})",
             f"  {'label':<{width}}  threshold  precision   recall       F1       AP  support"]
    for label, threshold, row in zip(result.labels, test.thresholds, test.per_class):
        lines.append(f"  {label:<{width}}  {threshold:>9.3f}  {percent(row.precision):>9}  "
                     f"{percent(row.recall):>7}  {percent(row.f1):>7}  "
                     f"{percent(row.average_precision):>7}  {row.support:>7}")
    return lines


def _novelty_lines(result: RetrainResult) -> list[str]:
    novelty = result.novelty
    if novelty is None:
        return []
    test = ("" if novelty["test_pass_rate"] is None else
            f"; {percent(novelty['test_pass_rate'])} of the test images pass "
            f"(N={novelty['test_count']})")
    return [f"Novelty ('unknown' above {novelty['threshold']:.4f}, set to pass "
            f"{percent(novelty['pass_rate'])} of {novelty['calibration_count']} "
            f"{novelty['calibrated_on']} images){test}."]


def _size_text(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _export_report_lines(result: RetrainResult) -> list[str]:
    """The export report as a small table (docs/exports.md), or nothing without exports."""
    if not result.exports:
        return []
    metric = "micro-F1" if result.exports[0].get("metric") == "micro_f1" else "accuracy"
    lines = ["", "Exports on the test split (vs the frozen graph):",
             f"  {'artifact':<14} {'size':>9} {metric:>9} {'change':>7} {'agree':>7} "
             f"{'max |dp|':>9}"]
    for row in result.exports:
        lines.append(
            f"  {row['artifact']:<14} {_size_text(row['size_bytes']):>9} "
            f"{row['accuracy'] * 100:>8.1f}% {row['change_points']:>+7.1f} "
            f"{row['agreement'] * 100:>6.1f}% {row['max_probability_difference']:>9.4f}"
        )
    return lines


def _training_mode_lines(result: RetrainResult) -> list[str]:
    """Summary of early stopping, distorted vectors and fine-tuning, when they were used."""
    lines = []
    if result.best_step is not None:
        lines += ["", f"Early stopping kept the weights of step {result.best_step}."]
    if result.distorted is not None:
        distorted = result.distorted
        lines += ["", f"Distorted training vectors ({distorted['variants']} per image): "
                  f"{distorted['computed']} computed, {distorted['reused']} reused."]
    if result.fine_tuning is not None:
        tuning = result.fine_tuning
        best = "" if tuning["best_epoch"] is None else f", kept epoch {tuning['best_epoch']}"
        lines += ["", f"Fine-tuned {tuning['tuned_parameters']} extractor weights "
                  f"({tuning['blocks']} blocks) for {tuning['epochs_run']} epochs{best}: "
                  f"validation accuracy = {percent(tuning['validation_accuracy'])}, "
                  f"{tuning['seconds']:.1f} s."]
    return lines


def _audit_lines(result: RetrainResult) -> list[str]:
    if result.audit is None:
        return []
    return ["", *audit_summary_lines(result.audit, result.outputs.get("audit_file"))]
