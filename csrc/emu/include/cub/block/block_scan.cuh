// SIMT emulator stand-in for cub::BlockScan (the sums the kernels use), built
// on the emulator's barriers: each thread publishes its items' total, a
// barrier, then each thread adds up the totals before its own.
#pragma once
#include "emu/cuda_emu.h"

namespace cub {

template <typename T, int BlockThreads>
class BlockScan {
 public:
  struct TempStorage {
    T totals[BlockThreads];
  };
  explicit BlockScan(TempStorage& storage) : storage_(storage) {}

  template <int Items>
  void InclusiveSum(const T (&in)[Items], T (&out)[Items], T& block_total) {
    T before = publish(in, block_total);
    for (int i = 0; i < Items; ++i) out[i] = before += in[i];
  }
  template <int Items>
  void ExclusiveSum(const T (&in)[Items], T (&out)[Items], T& block_total) {
    T before = publish(in, block_total);
    for (int i = 0; i < Items; ++i) {
      out[i] = before;
      before += in[i];
    }
  }

 private:
  // Returns the sum of the items of the threads before this one.
  template <int Items>
  T publish(const T (&in)[Items], T& block_total) {
    const int tid = static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    T mine{};
    for (int i = 0; i < Items; ++i) mine += in[i];
    storage_.totals[tid] = mine;
    __syncthreads();
    T before{};
    block_total = T{};
    for (int j = 0; j < BlockThreads; ++j) {
      if (j < tid) before += storage_.totals[j];
      block_total += storage_.totals[j];
    }
    return before;
  }
  TempStorage& storage_;
};

}  // namespace cub
