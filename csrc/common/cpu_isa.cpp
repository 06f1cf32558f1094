// CPU ISA path detection and the MLX_CPU_ISA override (see cpu_isa.h).

#include "common/cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace mlx_kernels {
namespace {

bool supports_all(std::initializer_list<bool> features) {
  for (bool f : features) {
    if (!f) return false;
  }
  return true;
}

CpuIsa detect() {
#ifdef MLX_CPU_HAS_ISA_PATHS
  __builtin_cpu_init();
  // The features of MLX_AVX2_FEATURES / MLX_AVX512_FEATURES, one by one.
  const bool avx2 = supports_all({__builtin_cpu_supports("avx2") != 0, __builtin_cpu_supports("fma") != 0,
                                  __builtin_cpu_supports("popcnt") != 0});
  const bool avx512 = avx2 && supports_all({__builtin_cpu_supports("avx512f") != 0,
                                            __builtin_cpu_supports("avx512bw") != 0,
                                            __builtin_cpu_supports("avx512vl") != 0,
                                            __builtin_cpu_supports("avx512dq") != 0});
  if (avx512) return CpuIsa::kAvx512;
  if (avx2) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kScalar;
}

// MLX_CPU_ISA_PRETEND_CPU=scalar|avx2 (tests only) makes this CPU look as if it
// lacked the paths above that one, so the error for a path the CPU cannot
// execute is tested on any machine; it never adds a path.
CpuIsa detect_or_pretend() {
  const CpuIsa detected = detect();
  const char* pretend = std::getenv("MLX_CPU_ISA_PRETEND_CPU");
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2}) {
    if (pretend != nullptr && std::strcmp(pretend, cpu_isa_name(isa)) == 0 && isa < detected) return isa;
  }
  return detected;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

CpuIsa cpu_isa_available() {
  static const CpuIsa best = detect_or_pretend();
  return best;
}

CpuIsa cpu_isa(const char* who) {
  const CpuIsa best = cpu_isa_available();
  const char* forced = std::getenv("MLX_CPU_ISA");
  if (forced == nullptr || forced[0] == '\0') return best;
  CpuIsa isa = CpuIsa::kScalar;  // the path named, tried in order
  while (std::strcmp(forced, cpu_isa_name(isa)) != 0) {
    TORCH_CHECK(isa != CpuIsa::kAvx512, who, ": MLX_CPU_ISA='", forced, "' is not a CPU ISA path: use scalar, avx2 ",
                "or avx512 (this CPU runs up to ", cpu_isa_name(best), "), or unset it for the best");
    isa = static_cast<CpuIsa>(static_cast<int>(isa) + 1);
  }
  TORCH_CHECK(isa <= best, who, ": MLX_CPU_ISA=", forced, " asks for a path this CPU cannot execute: it runs ",
              cpu_isa_name(best), " at most (avx2 needs AVX2, FMA and POPCNT; avx512 also needs AVX-512 F, BW, ",
              "VL and DQ); unset MLX_CPU_ISA or set it to one of the paths up to ", cpu_isa_name(best));
  return isa;
}

bool cpu_path_has(CpuIsa isa, CpuFeature feature) {
#ifdef MLX_CPU_HAS_ISA_PATHS
  if (isa != CpuIsa::kAvx512) return false;
  __builtin_cpu_init();
  switch (feature) {
    case CpuFeature::kAvx512Vnni: return __builtin_cpu_supports("avx512vnni") != 0;
    case CpuFeature::kAvx512Vpopcntdq: return __builtin_cpu_supports("avx512vpopcntdq") != 0;
  }
#endif
  return false;
}

}  // namespace mlx_kernels
