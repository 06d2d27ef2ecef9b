"""retrainer's benchmarks: each prints its figures, as ratios against a baseline measured in the
same run, and each has a tiny `--smoke` mode that the slow test suite runs, so none can rot.

Run one from the repository root, in the project's virtualenv, under the shared CPU lock:

    flock /work/team/cpu.lock .venv/bin/python -m benchmarks.bench_camera [--smoke]

Shared helpers (import them; never reach another benchmark through `sys.path`):
- `benchmarks.data`: real Fashion-MNIST class folders (`fashion_mnist_folder`).
- `benchmarks.photos`: real photographs from Debian's mate-backgrounds, and camera-size or small
  photo sets made from them (`photo_set`).
- `benchmarks.timing`: process and CPU timing, engine and stage timing, memory, the machine line.
- `benchmarks.cli`: the argument parser every benchmark starts from (adds `--smoke`).

A new benchmark is a module `benchmarks/bench_<what>.py` (or `measure_<what>.py`) with a
`main()` that starts from `benchmarks.cli.parser(__doc__)`; `tests/test_benchmarks.py` finds it
and runs its `--smoke` mode in the slow suite.
"""
