"""Images/s of the float32 engine on one device against all local devices (--extraction_devices).

On a machine with 2+ GPUs it compares GPU:0 with every GPU; elsewhere pass --logical-cpus 2 to
split the CPU into logical devices (a correctness run: on 2 cores it cannot be faster). Real
images: Fashion-MNIST PNGs (.cache/fashion-mnist) and crops of scikit-image's photos.

    PYTHONPATH=. python scripts/bench_devices.py --fashion 400 --photos 600 [--logical-cpus 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion", type=int, default=40, help="Fashion-MNIST PNGs per class")
    parser.add_argument("--photos", type=int, default=600, help="480x360 photo crops")
    parser.add_argument("--logical-cpus", type=int, default=0, help="split the CPU into this many")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, taken in turns")
    parser.add_argument("--extractor", default="efficientnet_lite0")
    args = parser.parse_args()
    import tensorflow as tf

    if args.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    from bench_pipeline import (
        fashion_mnist_folder,
        make_photos,
        raw_extractor_seconds,
        stage_seconds,
    )

    from retrainer.engines.devices import short_name
    from retrainer.engines.factory import create_engine
    from retrainer.engines.multi_device import local_devices
    from retrainer.extractors import create_extractor

    gpus = [name for name in local_devices() if "GPU:" in name]
    devices = tuple(gpus if len(gpus) >= 2 else [name for name in local_devices() if "CPU:" in name])
    work = Path(tempfile.mkdtemp())
    paths = sorted(fashion_mnist_folder(work / "fashion", args.fashion).rglob("*.png"))
    paths += make_photos(work / "photos", args.photos)
    extractor = create_extractor(args.extractor)
    engines = {"one device": create_engine(extractor, "float32", devices[:1]),
               f"{len(devices)} devices": create_engine(extractor, "float32", devices)}
    single = engines["one device"]
    sample = np.stack([np.zeros((*extractor.spec.input_size, 3), np.uint8)] * 7)
    error = np.abs(engines[f"{len(devices)} devices"](sample) - single(sample)).max()
    print(f"devices {', '.join(map(short_name, devices))}; {len(paths)} real images; max |vector difference| {error:.2e}")
    print(f"load before: {os.getloadavg()[0]:.1f}")
    print("| engine | devices | batch | raw engine images/s (per round) | stage images/s |")
    print("|---|---|---|---|---|")
    rates: dict[str, list[float]] = {name: [] for name in engines}
    stages: dict[str, list[float]] = {name: [] for name in engines}
    for round_ in range(args.rounds):
        for name, engine in engines.items():
            rates[name].append(len(paths) / raw_extractor_seconds(engine, paths, engine.batch_size))
            cache = work / f"cache-{round_}-{len(engine.devices)}"
            stages[name].append(len(paths) / stage_seconds(engine, paths, cache, engine.batch_size))
    for name, engine in engines.items():
        print(f"| float32 | {name} ({', '.join(map(short_name, engine.devices))}) "
              f"| {engine.batch_size} | {' / '.join(f'{rate:.0f}' for rate in rates[name])} "
              f"| {' / '.join(f'{rate:.0f}' for rate in stages[name])} |")
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
