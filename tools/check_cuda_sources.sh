#!/usr/bin/env bash
# Compile (not link) every CUDA source with nvcc so that a broken kernel cannot land unnoticed.
# The CPU build of torch cannot link CUDA code, so this checks compilation only.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
  echo "check_cuda_sources: nvcc not found, skipping CUDA compile check"
  exit 0
fi
torch_inc=$(python3 -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))")
py_inc=$(python3 -c "import sysconfig; print('-I' + sysconfig.get_paths()['include'])")
out=$(mktemp -d)
status=0
mapfile -t sources < <(git ls-files 'heron/*.cu' 2>/dev/null || find heron -name '*.cu')
for src in "${sources[@]}"; do
  echo "nvcc -c $src"
  if ! nvcc -c -std=c++17 -O3 -gencode=arch=compute_90,code=sm_90 $torch_inc $py_inc \
      -o "$out/$(basename "$src").o" "$src"; then
    echo "FAILED: $src"
    status=1
  fi
done
rm -rf "$out"
echo "check_cuda_sources: ${#sources[@]} CUDA source(s) compiled"
exit $status
