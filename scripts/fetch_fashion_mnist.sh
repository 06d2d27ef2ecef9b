#!/usr/bin/env bash
# Put Fashion-MNIST's four raw idx .gz files into DEST (default .cache/fashion-mnist), offline-friendly:
# they come from Debian's `dataset-fashion-mnist` package, not from the internet at large.
# Idempotent: does nothing when DEST already has all four; never installs the package system-wide.
set -euo pipefail

DEST=${1:-.cache/fashion-mnist}
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
PACKAGE=dataset-fashion-mnist
PACKAGE_DIR=usr/share/datasets/fashion-mnist

has_all() {  # has_all DIR: all four files present and non-empty
    local file
    for file in "${FILES[@]}"; do [ -s "$1/$file" ] || return 1; done
}

if has_all "$DEST"; then
    exit 0
fi
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

if has_all "/$PACKAGE_DIR"; then  # the package is installed already
    SOURCE="/$PACKAGE_DIR"
else
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    cd "$WORK"
    if ! apt-get download "$PACKAGE" >/dev/null 2>&1; then
        echo "Fetching $PACKAGE: updating the apt package lists first" >&2
        apt-get update -qq
        apt-get download "$PACKAGE"
    fi
    dpkg-deb -x "$PACKAGE"_*.deb extracted
    SOURCE="$WORK/extracted/$PACKAGE_DIR"
    if ! has_all "$SOURCE"; then
        echo "Error: $PACKAGE did not contain ${FILES[*]} under /$PACKAGE_DIR" >&2
        exit 1
    fi
fi

for file in "${FILES[@]}"; do
    gzip -t "$SOURCE/$file"
    cp "$SOURCE/$file" "$DEST/.$file.tmp"
    mv -f "$DEST/.$file.tmp" "$DEST/$file"  # atomic: a half-copied file is never left under its name
done
echo "Fashion-MNIST idx files are in $DEST" >&2
