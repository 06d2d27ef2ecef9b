"""--extraction_devices (retrainer/engines/multi_device.py): batches split across local devices.

The multi-device checks run in a subprocess that splits this machine's CPU into two logical
devices, which TensorFlow allows only before it initialises. The child writes its report to a file:
TensorFlow's placement log can reach stdout too, in any order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from retrainer.cli.retrain import main
from retrainer.engines import parse_devices
from retrainer.errors import UsageError
from tests.fixtures_data import REPO_ROOT
from tests.fixtures_pipeline import retrain_args

_CHILD = r'''
import json, re, sys
from pathlib import Path
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from click.testing import CliRunner
from retrainer.cli.retrain import main
from retrainer.engines import parse_devices
from retrainer.engines.factory import create_engine
from retrainer.engines.cpu import runs_bfloat16  # none on x86 without AVX-512
from retrainer.extractors import create_extractor
from retrainer.data.decoding import load_image
import tests.fixtures_extractors  # registers tiny_test

images, args, report_path = Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
paths = sorted(images.rglob("*.png"))[:5]
pixels = np.stack([load_image(path, (224, 224)) for path in paths])
# The placer logs the tiny network's ops' devices (it logs nothing once lite0 has loaded).
tf.debugging.set_log_device_placement(True)
create_engine(tests.fixtures_extractors.TinyExtractor(), "float32", parse_devices("CPU:0,CPU:1"))(
    np.stack([load_image(path, (32, 32)) for path in paths]))
tf.debugging.set_log_device_placement(False)
lite0 = create_extractor("efficientnet_lite0")
report = {}
for precision in ("float32", "bfloat16") if runs_bfloat16() else ("float32",):
    single = create_engine(lite0, precision)
    multi = create_engine(lite0, precision, parse_devices("CPU:0,CPU:1"))
    vectors = {count: (multi(pixels[:count]), single(pixels[:count])) for count in (5, 1)}
    report[precision] = {
        "ids": [multi.spec.id, single.spec.id], "devices": list(multi.devices),
        "errors": {count: float(np.abs(a - b).max() / np.abs(b).max()) for count, (a, b) in vectors.items()},
        "shapes": {count: list(a.shape) for count, (a, _) in vectors.items()},
    }
first = CliRunner().invoke(main, [*args, "--extraction_devices", "CPU:0,CPU:1", "--json"])
again = CliRunner().invoke(main, [*args, "--json"])
report["cli"] = [(run.exit_code, run.stdout if run.exit_code == 0 else run.output) for run in (first, again)]
report_path.write_text(json.dumps(report))
'''


def test_two_logical_cpus_give_the_single_device_vectors_and_both_are_used(
        fashion_mnist_holdout_dir, fashion_subset_dir, tmp_path):
    args = retrain_args(tmp_path, fashion_subset_dir, "--testing_percentage", "20", steps=20)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "0",
                   "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    report_path = tmp_path / "report.json"
    child = subprocess.run([sys.executable, "-c", _CHILD, str(fashion_mnist_holdout_dir),
                            json.dumps(args), str(report_path)], capture_output=True, text=True,
                           env=environment, timeout=300, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert "float32" in report
    for precision in [key for key in report if key != "cli"]:
        result = report[precision]
        assert result["ids"][0] == result["ids"][1]  # one cache namespace
        assert result["devices"] == ["/device:CPU:0", "/device:CPU:1"]
        assert result["shapes"] == {"5": [5, 1280], "1": [1, 1280]}
        assert max(result["errors"].values()) < 1e-4, (precision, result["errors"])
    # The placer's log (stderr or stdout, by TensorFlow build): the tiny network's convolutions ran
    # on both logical devices.
    placed = set(re.findall(r"\(Conv2D\): /job:localhost/replica:0/task:0/device:(CPU:\d)",
                            child.stderr + child.stdout))
    assert placed == {"CPU:0", "CPU:1"}, placed
    (code, first), (code_again, again) = report["cli"]
    assert code == 0 and code_again == 0, report["cli"]
    first, again = json.loads(first), json.loads(again)
    assert first["extraction_devices"] == ["/device:CPU:0", "/device:CPU:1"]
    assert again["extraction_devices"] == ["/device:CPU:0"]  # auto: no GPUs, as before
    assert first["bottlenecks_computed"] == 100 and again["bottlenecks_reused"] == 100
    assert first["test_accuracy"] == again["test_accuracy"]  # the same vectors, the same head
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["flags"]["extraction_devices"] == "auto"  # the second run's


def test_device_names_parse_to_tensorflow_names():
    assert parse_devices("auto") == ()
    assert parse_devices("GPU:0, gpu:1") == ("/device:GPU:0", "/device:GPU:1")
    assert parse_devices("0,1") == ("/device:GPU:0", "/device:GPU:1")
    assert parse_devices("/device:CPU:0") == ("/device:CPU:0",)
    with pytest.raises(UsageError, match="names a device twice"):
        parse_devices("GPU:0,0")


@pytest.mark.parametrize("devices, precision, expected", [
    ("TPU:0", "auto", "--extraction_devices must be auto or a comma-separated list"),
    ("GPU:7,CPU:0", "float32", "--extraction_devices: no device GPU:7 here; this machine has CPU:0"),
    ("CPU:0", "int8", ("--extractor_precision int8 runs on the CPU (LiteRT) and cannot use "
                       "--extraction_devices")),
])
def test_bad_devices_exit_2_with_one_line(devices, precision, expected, color_image_dir, tmp_path):
    args = retrain_args(tmp_path, color_image_dir, "--extraction_devices", devices,
                        "--extractor_precision", precision)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("Error: ") and expected in message, message
    assert "Traceback" not in result.output
