"""TFLite metadata: labels and normalization inside the `.tflite`, as Model Maker writes them.

ML Kit and the Task Library read a `TFLITE_METADATA` entry of the model: a flatbuffer of the public
schema `tensorflow_lite_support/metadata/metadata_schema.fbs` (file identifier "M001"). Without it
they refuse the model (googlesamples/mlkit#280). `tflite-support`, which writes it, cannot be
installed beside TF 2.21 (protobuf < 4), so the few tables needed are written (and read back) here
with the `flatbuffers` package:

    ModelMetadata{name, description, subgraph_metadata: [SubGraphMetadata{
        input_tensor_metadata: [TensorMetadata{name, content: Content{ImageProperties{RGB}},
                                               process_units: [NormalizationOptions{mean, std}],
                                               stats}],
        output_tensor_metadata: [TensorMetadata{name, content: Content{FeatureProperties},
                                                stats, associated_files: [labels.txt]}]}],
        min_parser_version}

What retrainer adds beyond the schema's tables (multi-label thresholds, the novelty threshold) is
the model-level associated file `retrainer.json`; a novelty output gets its own TensorMetadata.
By the metadata convention, associated files are a zip (stored, uncompressed) appended to the
model; the interpreter ignores the trailing bytes. The slot numbers below are the fields' positions
in the schema.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from typing import Any, Optional, Sequence

import flatbuffers
import numpy as np
from flatbuffers.number_types import Float32Flags, Int8Flags, Uint8Flags, Uint32Flags
from flatbuffers.table import Table
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from retrainer.formats import flatbuffer_fields as fields

METADATA_NAME = b"TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"  # every field written here exists since schema 1.0.0
LABELS_FILE = "labels.txt"
EXTRA_FILE = "retrainer.json"

# Enum and union values of metadata_schema.fbs.
_DESCRIPTIONS = 1
_TENSOR_AXIS_LABELS = 2
_COLOR_SPACE_RGB = 1
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2
_PROCESS_NORMALIZATION = 1


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    """What the metadata says about an image classifier.

    Attributes:
        name / description: shown by tools (Netron, Android Studio's model viewer).
        input_size: (height, width) of the input image.
        mean / std: the input is (pixel - mean) / std for float models; uint8 models take raw
            pixels (their quantization parameters map them).
        labels: class names in output order, stored as labels.txt.
        labels_file: the associated file's name.
        extra: retrainer's own metadata ({"multi_label": ..., "novelty": ...}), stored as
            retrainer.json; a "novelty" entry also describes the model's second output.
    """

    name: str
    description: str
    input_size: tuple[int, int]
    mean: float
    std: float
    labels: tuple[str, ...]
    labels_file: str = LABELS_FILE
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def add_metadata(model: bytes, description: ModelDescription) -> bytes:
    """`model` with a TFLITE_METADATA entry and labels.txt appended as a zip.

    Args:
        model: a `.tflite` flatbuffer without metadata.
        description: what to write.

    Returns:
        The new `.tflite` bytes.
    """
    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(build_metadata(description), np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(tree.buffers) - 1
    tree.metadata = [item for item in (tree.metadata or []) if item.name != METADATA_NAME]
    tree.metadata.append(entry)
    packed = bytearray(flatbuffer_utils.convert_object_to_bytearray(tree))
    stream = io.BytesIO(packed)
    stream.seek(0, io.SEEK_END)
    with zipfile.ZipFile(stream, "a", compression=zipfile.ZIP_STORED) as archive:
        labels_text = "".join(f"{label}\n" for label in description.labels)
        archive.writestr(description.labels_file, labels_text.encode("utf-8"))
        if description.extra:
            text = json.dumps(description.extra, indent=2, ensure_ascii=False) + "\n"
            archive.writestr(EXTRA_FILE, text.encode("utf-8"))
    return stream.getvalue()


def build_metadata(description: ModelDescription) -> bytes:
    """The ModelMetadata flatbuffer (identifier M001) for `description`."""
    builder = flatbuffers.Builder(1024)
    height, width = description.input_size

    image_size = _table(builder, [(0, "uint32", width), (1, "uint32", height)])
    image_properties = _table(builder, [(0, "int8", _COLOR_SPACE_RGB), (1, "offset", image_size)])
    input_content = _table(builder, [(0, "uint8", _CONTENT_IMAGE),
                                     (1, "offset", image_properties)])
    normalization = _table(builder, [(0, "offset", _floats(builder, [description.mean])),
                                     (1, "offset", _floats(builder, [description.std]))])
    process_unit = _table(builder, [(0, "uint8", _PROCESS_NORMALIZATION),
                                    (1, "offset", normalization)])
    input_stats = _stats(builder, low=0.0, high=255.0)
    input_tensor = _table(builder, [
        (0, "offset", builder.CreateString("image")),
        (1, "offset", builder.CreateString("RGB image, pixels 0..255 before normalization.")),
        (3, "offset", input_content),
        (4, "offset", _offsets(builder, [process_unit])),
        (5, "offset", input_stats),
    ])

    labels_file = _table(builder, [
        (0, "offset", builder.CreateString(description.labels_file)),
        (1, "offset", builder.CreateString("Labels for the classes the model can recognize.")),
        (2, "int8", _TENSOR_AXIS_LABELS),
    ])
    feature_properties = _table(builder, [])
    output_content = _table(builder, [(0, "uint8", _CONTENT_FEATURE),
                                      (1, "offset", feature_properties)])
    output_tensor = _table(builder, [
        (0, "offset", builder.CreateString("probability")),
        (1, "offset", builder.CreateString("Probabilities of the labels respectively.")),
        (3, "offset", output_content),
        (5, "offset", _stats(builder, low=0.0, high=1.0)),
        (6, "offset", _offsets(builder, [labels_file])),
    ])

    outputs = [output_tensor]
    novelty = description.extra.get("novelty")
    if novelty is not None:
        outputs.append(_table(builder, [
            (0, "offset", builder.CreateString("novelty")),
            (1, "offset", builder.CreateString(
                f"Novelty score: the image is unlike the training images (unknown) above "
                f"{novelty['threshold']:.6g}.")),
            (3, "offset", _table(builder, [(0, "uint8", _CONTENT_FEATURE),
                                           (1, "offset", _table(builder, []))])),
        ]))
    subgraph = _table(builder, [
        (2, "offset", _offsets(builder, [input_tensor])),
        (3, "offset", _offsets(builder, outputs)),
    ])
    root_fields = [
        (0, "offset", builder.CreateString(description.name)),
        (1, "offset", builder.CreateString(description.description)),
        (3, "offset", _offsets(builder, [subgraph])),
        (7, "offset", builder.CreateString(MIN_PARSER_VERSION)),
    ]
    if description.extra:
        extra_file = _table(builder, [
            (0, "offset", builder.CreateString(EXTRA_FILE)),
            (1, "offset", builder.CreateString("retrainer's thresholds (JSON).")),
            (2, "int8", _DESCRIPTIONS),
        ])
        root_fields.append((6, "offset", _offsets(builder, [extra_file])))
    root = _table(builder, root_fields)
    builder.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(builder.Output())


def read_metadata(model: bytes) -> Optional[ModelDescription]:
    """The description stored in a `.tflite` by `add_metadata`, or None when it has none.

    Raises:
        ValueError: the metadata or its zip of associated files is malformed.
    """
    data = metadata_buffer(model)
    if data is None:
        return None
    if data[4:8] != METADATA_IDENTIFIER:
        raise ValueError("TFLITE_METADATA is not a metadata flatbuffer (identifier M001)")
    root = fields.root(data)
    subgraph = fields.tables(root, 3)[0]
    input_tensor = fields.tables(subgraph, 2)[0]
    output_tensor = fields.tables(subgraph, 3)[0]
    image = fields.table(fields.table(input_tensor, 3), 1)
    size = fields.table(image, 1)
    mean, std = 0.0, 1.0
    for unit in fields.tables(input_tensor, 4):
        if fields.scalar(unit, 0, Uint8Flags) == _PROCESS_NORMALIZATION:
            options = fields.table(unit, 1)
            mean, std = _first_float(options, 0), _first_float(options, 1)
    labels_files = [fields.string(item, 0) for item in fields.tables(output_tensor, 6)
                    if fields.scalar(item, 2, Int8Flags) == _TENSOR_AXIS_LABELS]
    labels: tuple[str, ...] = ()
    if labels_files:
        labels = tuple(associated_file(model, labels_files[0]).decode("utf-8").splitlines())
    extra = {}
    if any(fields.string(item, 0) == EXTRA_FILE for item in fields.tables(root, 6)):
        extra = json.loads(associated_file(model, EXTRA_FILE).decode("utf-8"))
    return ModelDescription(
        name=fields.string(root, 0), description=fields.string(root, 1),
        input_size=(fields.scalar(size, 1, Uint32Flags),
                    fields.scalar(size, 0, Uint32Flags)),
        mean=mean, std=std, labels=labels,
        labels_file=labels_files[0] if labels_files else LABELS_FILE, extra=extra,
    )


def metadata_buffer(model: bytes) -> Optional[bytes]:
    """The raw bytes of the model's TFLITE_METADATA buffer, or None."""
    tree = schema.Model.GetRootAs(model, 0)
    for index in range(tree.MetadataLength()):
        entry = tree.Metadata(index)
        if entry.Name() == METADATA_NAME:
            return tree.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def associated_file(model: bytes, name: str) -> bytes:
    """One file of the zip appended to the model.

    Raises:
        ValueError: no zip, or no such file in it.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            return archive.read(name)
    except (zipfile.BadZipFile, KeyError) as error:
        raise ValueError(f"associated file {name} is missing: {error}") from None


def _table(builder: flatbuffers.Builder, entries: Sequence[tuple[int, str, object]]) -> int:
    """A table from (slot, kind, value); children (offsets) must be built already."""
    adders = {
        "offset": builder.PrependUOffsetTRelativeSlot,
        "uint32": builder.PrependUint32Slot,
        "uint8": builder.PrependUint8Slot,
        "int8": builder.PrependInt8Slot,
    }
    builder.StartObject(1 + max((slot for slot, _, _ in entries), default=-1))
    for slot, kind, value in entries:
        adders[kind](slot, value, 0)
    return builder.EndObject()


def _offsets(builder: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _floats(builder: flatbuffers.Builder, values: Sequence[float]) -> int:
    return builder.CreateNumpyVector(np.asarray(values, np.float32))


def _stats(builder: flatbuffers.Builder, low: float, high: float) -> int:
    return _table(builder, [(0, "offset", _floats(builder, [high])),
                            (1, "offset", _floats(builder, [low]))])


def _first_float(table: Table, slot: int) -> float:
    values = fields.numbers(table, slot, Float32Flags)
    if not values:
        raise ValueError(f"metadata table lacks field {slot}")
    return float(values[0])
