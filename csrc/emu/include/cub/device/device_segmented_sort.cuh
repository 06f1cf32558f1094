// SIMT emulator stand-in for cub::DeviceSegmentedSort: a host sort (the one
// library call the emulator does not run as device code).
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "emu/cuda_emu.h"

namespace cub {

struct DeviceSegmentedSort {
  template <typename Key, typename Value, typename Offset>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const Key* keys_in, Key* keys_out,
                               const Value* values_in, Value* values_out, int64_t count, int64_t segments,
                               const Offset* begin, const Offset* end, cudaStream_t = nullptr) {
    if (temp == nullptr) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    (void)count;
    std::vector<int64_t> order;
    for (int64_t s = 0; s < segments; ++s) {
      order.resize(end[s] - begin[s]);
      std::iota(order.begin(), order.end(), static_cast<int64_t>(begin[s]));
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys_in[a] < keys_in[b]; });
      for (size_t i = 0; i < order.size(); ++i) {
        keys_out[begin[s] + i] = keys_in[order[i]];
        values_out[begin[s] + i] = values_in[order[i]];
      }
    }
    return cudaSuccess;
  }
};

}  // namespace cub
