#!/usr/bin/env bash
# Set up a machine for nfields: CPU torch first (a bare `torch` requirement would pull a multi-GB CUDA build),
# then the package with its dev extras, then the system tools the tests use (Chromium for the viewer test,
# the Khronos glTF validator for the export test). Safe to run again; skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[dev]"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
  # open3d's shared library links libusb (make-scene's ray casting).
  ldconfig -p | grep -q libusb-1.0.so.0 || need+=(libusb-1.0-0)
  # The fused CPU hash-grid kernels are built on first use (nfields/encodings/hashgrid_native.py).
  command -v g++ >/dev/null || need+=(g++)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
else
  echo "install.sh: not root, skipping apt packages (chromium, chromium-driver: the viewer test; libusb-1.0-0: open3d; g++: the fused hash-grid kernels)"
fi
if command -v npm >/dev/null; then
  [ -d .cache/npm/node_modules/gltf-validator ] || npm install --silent --no-audit --no-fund --prefix .cache/npm gltf-validator >/dev/null
else
  echo "install.sh: npm not found, skipping gltf-validator (only the export validation test needs it)"
fi
echo "install.sh: done"
