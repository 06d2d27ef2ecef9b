"""Images/s of the float32 engine on one device against all local devices (--extraction_devices).

On a machine with 2+ GPUs it compares GPU:0 with every GPU; elsewhere pass --logical-cpus 2 to
split the CPU into logical devices (a correctness run: on 2 cores it cannot be faster). Real
images: Fashion-MNIST PNGs and 480x360 photos (`benchmarks.photos`).

    python -m benchmarks.bench_devices --fashion 400 --photos 600 [--logical-cpus 2] [--smoke]
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import cli
from benchmarks.data import fashion_mnist_files
from benchmarks.photos import SMALL, photo_set
from benchmarks.timing import engine_seconds, machine_line, stage_seconds


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--fashion", type=int, default=40, help="Fashion-MNIST PNGs per class")
    parser.add_argument("--photos", type=int, default=600, help="480x360 photo crops")
    parser.add_argument("--logical-cpus", type=int, default=0, help="split the CPU into this many")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, taken in turns")
    parser.add_argument("--extractor", default="efficientnet_lite0")
    args = cli.parse(parser, {"fashion": 1, "photos": 6, "rounds": 1, "logical_cpus": 2})
    import tensorflow as tf

    if args.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    from retrainer.data.decoding import load_image
    from retrainer.engines.devices import short_name
    from retrainer.engines.factory import create_engine
    from retrainer.engines.multi_device import local_devices
    from retrainer.extractors import create_extractor

    gpus = [name for name in local_devices() if "GPU:" in name]
    devices = tuple(gpus if len(gpus) >= 2 else [name for name in local_devices() if "CPU:" in name])
    work = Path(tempfile.mkdtemp())
    paths = fashion_mnist_files(work / "fashion", args.fashion)
    paths += photo_set(work / "photos", args.photos, SMALL)
    extractor = create_extractor(args.extractor)
    engines = {"one device": create_engine(extractor, "float32", devices[:1]),
               f"{len(devices)} devices": create_engine(extractor, "float32", devices)}
    single = engines["one device"]
    pixels = np.stack([load_image(path, extractor.spec.input_size) for path in paths])
    sample = np.stack([np.zeros((*extractor.spec.input_size, 3), np.uint8)] * 7)
    error = np.abs(engines[f"{len(devices)} devices"](sample) - single(sample)).max()
    print(f"devices {', '.join(map(short_name, devices))}; {len(paths)} real images; max |vector difference| {error:.2e}")
    print(f"before: {machine_line()}")
    print("| engine | devices | batch | raw engine images/s (per round) | stage images/s |")
    print("|---|---|---|---|---|")
    rates: dict[str, list[float]] = {name: [] for name in engines}
    stages: dict[str, list[float]] = {name: [] for name in engines}
    for round_ in range(args.rounds):
        for name, engine in engines.items():
            wall, _ = engine_seconds(engine, pixels, engine.batch_size)
            rates[name].append(len(paths) / wall)
            cache = work / f"cache-{round_}-{len(engine.devices)}"
            stages[name].append(len(paths) / stage_seconds(engine, paths, cache, engine.batch_size))
    for name, engine in engines.items():
        print(f"| float32 | {name} ({', '.join(map(short_name, engine.devices))}) "
              f"| {engine.batch_size} | {' / '.join(f'{rate:.0f}' for rate in rates[name])} "
              f"| {' / '.join(f'{rate:.0f}' for rate in stages[name])} |")
    print(f"after: {machine_line()}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
