#!/usr/bin/env bash
# Compile CUDA sources on their own with the package's flags, without building
# or linking the extension: a quick "does this .cu compile" for development.
#   scripts/check_cuda.sh csrc/int8/int8_mm.cu [more.cu ...]
# Arch list: TORCH_CUDA_ARCH_LIST (default "8.0;9.0a", as in the build); -DNDEBUG
# as in its Release build (asserts in CuTe mainloops serialize wgmma).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
read -r torch_dir cutlass_inc nvidia_inc py_inc abi < <("$py" - <<'PY'
import importlib.util, os, sysconfig, nvidia, torch
cutlass = os.path.join(list(importlib.util.find_spec("cutlass_library").submodule_search_locations)[0], "source", "include")
print(os.path.dirname(torch.__file__), cutlass, os.path.join(list(nvidia.__path__)[0], "cu13", "include"),
      sysconfig.get_paths()["include"], int(torch._C._GLIBCXX_USE_CXX11_ABI))
PY
)
gencode=()
IFS=';' read -ra archs <<< "${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}"
for arch in "${archs[@]}"; do
  a="${arch//./}"; gencode+=("-gencode=arch=compute_${a},code=sm_${a}")
done
for src in "$@"; do
  echo "nvcc ${src} (${archs[*]})"
  nvcc -std=c++20 -O3 -c "${src}" -o /dev/null "${gencode[@]}" \
    -DNDEBUG -DMLX_NAMESPACE=mlx -DMLX_WITH_CUDA=1 -DAT_PER_OPERATOR_HEADERS -DTORCH_ASSERT_ONLY_METHOD_OPERATORS -D_GLIBCXX_USE_CXX11_ABI="${abi}" -Xcompiler=-fPIC \
    --expt-relaxed-constexpr --expt-extended-lambda --diag-suppress=177,550,20012 \
    -Icsrc -isystem "${cutlass_inc}" -isystem "${torch_dir}/include" \
    -isystem "${torch_dir}/include/torch/csrc/api/include" -isystem "${nvidia_inc}" -isystem "${py_inc}"
done
