#!/usr/bin/env bash
# Fetch, here (with PyPI access), the CPython 3.12 x86-64 wheels benchmarks/gpu.sh installs on a GPU
# machine that has torch but no package index: MONAI and pydantic at the versions of requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=()
for name in monai pydantic pydantic_core annotated-types typing-inspection; do
  pins+=("$(grep -i "^${name}==" requirements.lock)")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
