// SpGEMM on CUDA: the hash-table row kernels and their launchers, shared by
// spgemm.cu (validation, bounds, binning, symbolic pass, driver) and
// numeric_pass.cuh (numeric pass, instantiated per value dtype in
// numeric_f32.cu / numeric_f64.cu). Several translation units keep each one's
// compile time low: every row kernel is instantiated per bin and per dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>
#include <vector>

#include "common/cuda_utils.cuh"
#include "spgemm/spgemm.h"

namespace mlx_kernels::spgemm {

constexpr int kEmpty = -1;
constexpr int kSharedBins = 8;            // tables of 32, 64, ..., 4096 slots
constexpr int kSmallestTableLog2 = 5;
constexpr int kGlobalBin = kSharedBins;   // table in global memory
constexpr int kEmptyBin = kSharedBins + 1;  // no products
constexpr int kNumBins = kSharedBins + 2;
constexpr int kSlotsPerThread = 4;
constexpr int kMinBlockThreads = 128;
constexpr int kGlobalThreads = 512;
constexpr int kRowThreads = 256;  // row-parallel helper kernels
// Largest global-memory table pool (slots) one batch of long rows may use.
constexpr int64_t kGlobalPoolSlots = int64_t{1} << 24;

constexpr int log2_of(int x) { return x <= 1 ? 0 : 1 + log2_of(x / 2); }
// Threads per block of a shared-memory bin with kTable slots per row.
constexpr int shared_block_threads(int table) {
  return table / kSlotsPerThread > kMinBlockThreads ? table / kSlotsPerThread : kMinBlockThreads;
}

// --- 2./4. hashing a row's products ---------------------------------------------

// Inserts column `col` into a table of 2^bits slots (shared or global memory)
// and, numeric, adds v to its value. Returns true when this call created the
// entry. Keys only ever change from kEmpty to a column, so a stale read can
// only be a stale kEmpty, which the atomicCAS then corrects. Tables are sized
// above the row's distinct columns, so a free slot always exists; a full table
// (a sizing bug) traps the kernel rather than probing forever.
template <bool kNumeric, typename value_t>
__device__ __forceinline__ bool hash_accumulate(int* keys, value_t* vals, int bits, int col, value_t v) {
  const uint32_t mask = static_cast<uint32_t>((uint64_t{1} << bits) - 1);  // bits may be 32
  uint32_t slot = hash_slot(static_cast<uint64_t>(col), bits);
  for (uint64_t probes = 0; probes <= mask; ++probes) {
    int key = keys[slot];
    bool created = false;
    if (key == kEmpty) {
      key = atomicCAS(&keys[slot], kEmpty, col);
      created = key == kEmpty;
    }
    if (created || key == col) {
      if constexpr (kNumeric) atomicAdd(&vals[slot], v);
      return created;
    }
    slot = (slot + 1) & mask;
  }
  __trap();
  return false;  // not reached
}

// All products of row `row` by the `threads` threads of a group (thread `lane`):
// subgroups of 2^sub_log2 threads take A's entries in turn and walk the
// matching row of B together. Returns the entries this thread created.
template <bool kNumeric, typename index_t, typename value_t>
__device__ __forceinline__ int accumulate_row(const Operands<index_t, value_t>& op, int row, int lane,
                                              int threads, int sub_log2, int* keys, value_t* vals,
                                              int bits) {
  const int sub = 1 << sub_log2;
  int created = 0;
  for (int64_t p = op.a_crow[row] + (lane >> sub_log2); p < op.a_crow[row + 1]; p += threads >> sub_log2) {
    const int64_t kk = op.a_col[p];
    const value_t a = kNumeric ? op.a_val[p] : value_t{0};
    for (int64_t q = op.b_crow[kk] + (lane & (sub - 1)); q < op.b_crow[kk + 1]; q += sub) {
      const value_t v = kNumeric ? a * op.b_val[q] : value_t{0};
      created += hash_accumulate<kNumeric>(keys, vals, bits, static_cast<int>(op.b_col[q]), v);
    }
  }
  return created;
}

// Shared-memory bin: groups of kGroup threads, one row each, a table of
// kTable = kSlotsPerThread·kGroup slots per row.
//   symbolic: row_nnz[row] = number of distinct columns.
//   numeric:  the row's (column, value) pairs, sorted by column, at
//             c_col/c_val[c_offsets[row] ...]. The table is compacted to its
//             front, then every entry's rank is the number of smaller columns
//             (an O(nnz²/threads) counting sort: nnz <= 2048 here, and all
//             threads read the same key at a time, a shared-memory broadcast).
template <bool kNumeric, int kTable, typename index_t, typename value_t>
__global__ void __launch_bounds__(shared_block_threads(kTable))
shared_table_kernel(Operands<index_t, value_t> op, const int32_t* rows, int num_rows,
                                    int sub_log2, int64_t* row_nnz, const int64_t* c_offsets,
                                    index_t* c_col, value_t* c_val) {
  constexpr int kGroup = kTable / kSlotsPerThread;
  constexpr int kBits = log2_of(kTable);
  MLX_DYNAMIC_SHARED(unsigned char, smem);
  const int groups = blockDim.x / kGroup;
  const int group = threadIdx.x / kGroup, lane = threadIdx.x % kGroup;
  value_t* vals = reinterpret_cast<value_t*>(smem) + group * kTable;
  int* keys = reinterpret_cast<int*>(smem + (kNumeric ? groups * kTable * sizeof(value_t) : 0));
  int* counts = keys + groups * kTable;
  keys += group * kTable;

#pragma unroll
  for (int j = 0; j < kSlotsPerThread; ++j) {
    keys[lane + j * kGroup] = kEmpty;
    if constexpr (kNumeric) vals[lane + j * kGroup] = value_t{0};
  }
  if (lane == 0) counts[group] = 0;
  __syncthreads();

  // int64: the last CTA's groups run past num_rows, which may be near INT32_MAX.
  const int64_t index = int64_t{blockIdx.x} * groups + group;
  const bool active = index < num_rows;
  const int row = active ? rows[index] : 0;
  if (active) {
    const int created = accumulate_row<kNumeric>(op, row, lane, kGroup, sub_log2, keys, vals, kBits);
    if (!kNumeric && created) atomicAdd(&counts[group], created);
  }
  __syncthreads();
  if constexpr (!kNumeric) {
    if (active && lane == 0) row_nnz[row] = counts[group];
  } else {
    int entry_keys[kSlotsPerThread];
    value_t entry_vals[kSlotsPerThread];
#pragma unroll
    for (int j = 0; j < kSlotsPerThread; ++j) {
      entry_keys[j] = keys[lane + j * kGroup];
      entry_vals[j] = vals[lane + j * kGroup];
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kSlotsPerThread; ++j) {
      if (entry_keys[j] != kEmpty) {
        const int at = atomicAdd(&counts[group], 1);
        keys[at] = entry_keys[j];
        vals[at] = entry_vals[j];
      }
    }
    __syncthreads();
    if (active) {
      const int nnz = counts[group];
      const int64_t out = c_offsets[row];
      for (int e = lane; e < nnz; e += kGroup) {
        const int key = keys[e];
        int rank = 0;
        for (int j = 0; j < nnz; ++j) rank += keys[j] < key;
        c_col[out + rank] = static_cast<index_t>(key);
        c_val[out + rank] = vals[e];
      }
    }
  }
}

// Global-memory bin: a block per row, the row's table at pool + table_offset
// (2^table_bits[j] slots, keys and values). Symbolic: row_nnz. Numeric: the
// row's entries compacted (unsorted) to compact_keys/vals + compact_offset[j].
template <bool kNumeric, typename index_t, typename value_t>
__global__ void __launch_bounds__(kGlobalThreads)
global_table_kernel(Operands<index_t, value_t> op, const int32_t* rows, const int64_t* table_offset,
                    const int32_t* table_bits, int sub_log2, int* pool_keys, value_t* pool_vals,
                    int64_t* row_nnz, const int64_t* compact_offset, int* compact_keys,
                    value_t* compact_vals) {
  MLX_SHARED(int, count);
  const int row = rows[blockIdx.x];
  const int bits = table_bits[blockIdx.x];
  const int64_t slots = int64_t{1} << bits;
  int* keys = pool_keys + table_offset[blockIdx.x];
  value_t* vals = kNumeric ? pool_vals + table_offset[blockIdx.x] : nullptr;
  for (int64_t s = threadIdx.x; s < slots; s += blockDim.x) {
    keys[s] = kEmpty;
    if constexpr (kNumeric) vals[s] = value_t{0};
  }
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  const int created = accumulate_row<kNumeric>(op, row, threadIdx.x, blockDim.x, sub_log2, keys, vals, bits);
  if constexpr (!kNumeric) {
    if (created) atomicAdd(&count, created);
    __syncthreads();
    if (threadIdx.x == 0) row_nnz[row] = count;
  } else {
    __syncthreads();
    // Read the table at L2 (__ldcg): the atomics updated it there, and this SM's
    // L1 may still hold lines loaded while probing.
    const int64_t out = compact_offset[blockIdx.x];
    for (int64_t s = threadIdx.x; s < slots; s += blockDim.x) {
      const int key = __ldcg(&keys[s]);
      if (key != kEmpty) {
        const int at = atomicAdd(&count, 1);
        compact_keys[out + at] = key;
        compact_vals[out + at] = __ldcg(&vals[s]);
      }
    }
  }
}

// --- host side ----------------------------------------------------------------

inline int64_t blocks_for(int64_t items, int threads) { return std::max<int64_t>(1, ceil_div_dev<int64_t>(items, threads)); }

// The rows of each bin, listed contiguously (one device array), and where
// each bin starts in it.
struct Bins {
  at::Tensor rows;                 // int32 [m]
  std::vector<int64_t> start;      // kNumBins + 1
  int64_t count(int b) const { return start[b + 1] - start[b]; }
  const int32_t* rows_of(int b) const { return rows.data_ptr<int32_t>() + start[b]; }
};

template <bool kNumeric, int kTable, typename index_t, typename value_t>
void launch_shared_bin(const Operands<index_t, value_t>& op, const Bins& bins, int bin, int sub_log2,
                       int64_t* row_nnz, const int64_t* c_offsets, index_t* c_col, value_t* c_val) {
  constexpr int kGroup = kTable / kSlotsPerThread;
  const int64_t rows = bins.count(bin);
  if (rows == 0) return;
  const int threads = shared_block_threads(kTable);
  const int groups = threads / kGroup;
  const size_t smem = groups * kTable * (sizeof(int) + (kNumeric ? sizeof(value_t) : 0)) + groups * sizeof(int);
  auto kernel = shared_table_kernel<kNumeric, kTable, index_t, value_t>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  MLX_LAUNCH_KERNEL(kernel, blocks_for(rows, groups), threads, smem, at::cuda::getCurrentCUDAStream(),
      op, bins.rows_of(bin), static_cast<int>(rows), std::min(sub_log2, log2_of(kGroup)), row_nnz,
      c_offsets, c_col, c_val);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool kNumeric, typename index_t, typename value_t>
void launch_shared_bins(const Operands<index_t, value_t>& op, const Bins& bins, int sub_log2,
                        int64_t* row_nnz, const int64_t* c_offsets, index_t* c_col, value_t* c_val) {
  [&]<int... b>(std::integer_sequence<int, b...>) {
    (launch_shared_bin<kNumeric, (1 << (kSmallestTableLog2 + b)), index_t, value_t>(op, bins, b, sub_log2, row_nnz,
                                                                                   c_offsets, c_col, c_val),
     ...);
  }(std::make_integer_sequence<int, kSharedBins>{});
}

// Rows of the global bin, processed in batches whose tables fit the pool.
// `table_slots` holds, per row of the bin, the slots it needs; each batch calls
// run(first, last, table_offset, table_bits, pool_slots) for bin rows [first, last).
template <typename Fn>
void for_each_global_batch(const std::vector<int64_t>& table_slots, Fn&& run) {
  const int64_t rows = static_cast<int64_t>(table_slots.size());
  int64_t first = 0;
  while (first < rows) {
    std::vector<int64_t> offsets;
    std::vector<int32_t> bits;
    int64_t pool = 0, last = first;
    while (last < rows) {
      const int b = ceil_log2(table_slots[last]);
      if (last > first && pool + (int64_t{1} << b) > kGlobalPoolSlots) break;
      offsets.push_back(pool);
      bits.push_back(b);
      pool += int64_t{1} << b;
      ++last;
    }
    run(first, last, offsets, bits, pool);
    first = last;
  }
}

// Numeric pass over binned rows (numeric_pass.cuh): fills c_col / c_val,
// sorted by column within each row, at the offsets c_offsets (int64 [m + 1]).
template <typename index_t, typename value_t>
void numeric_pass(const Operands<index_t, value_t>& op, const Bins& bins, int sub_log2, const at::Tensor& table,
                  const at::Tensor& c_offsets, at::Tensor& c_col, at::Tensor& c_val);

// Sorts, by key, each segment [offsets[s], offsets[s + 1]) of (keys, items)
// into (keys_out, items_out), on the current stream (segmented_sort.cu). All
// int32 except offsets (int64 [segments + 1]); the items are positions, so one
// instantiation serves every value dtype (values are gathered through them).
void segmented_sort_pairs(const at::Tensor& keys, const at::Tensor& items, const at::Tensor& offsets,
                          at::Tensor& keys_out, at::Tensor& items_out);

}  // namespace mlx_kernels::spgemm
