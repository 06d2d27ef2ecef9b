# Worker container for `retrain-extract` on Dataflow (and any portable runner using Docker
# environments) and for a Dask cluster's scheduler and workers: Beam's own SDK image, with the same
# pinned TensorFlow and retrainer inside, so the workers compute exactly the vectors a local
# `retrain` would. Build and push, then pass `--sdk_container_image REGISTRY/retrainer-beam:TAG`,
# or run `dask scheduler` / `dask worker` in it (see docs/beam.md). Untested: CI does not
# build this image.
FROM apache/beam_python3.11_sdk:2.77.0

RUN pip install --no-cache-dir tensorflow==2.21.0 google-crc32c==1.9.0

COPY pyproject.toml README.md /opt/retrainer/
COPY retrainer /opt/retrainer/retrainer
RUN pip install --no-cache-dir '/opt/retrainer[beam,dask]' 'apache-beam[gcp,dask]==2.77.0'
