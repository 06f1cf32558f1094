// Device code of the FFT-as-matmul convolution, shared by the CUDA translation
// units (fftconv.cu: fp32 and the spectrum, fftconv_half.cu: the fp16/bf16
// tensor-core instantiations). The algorithm is described in fftconv.cu.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/cpu_utils.h"
#include "common/cuda_utils.cuh"
#include "common/mma.cuh"
#include "fftconv/fftconv.h"

namespace mlx_kernels::fftconv::detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlock = 16384;                  // points per CTA in shared memory
constexpr int64_t kScratchFloats = int64_t{1} << 28;  // 1 GiB of two-pass scratch

struct DeviceStages {
  int num;
  int radix[kMaxStages];
  int stride[kMaxStages];
};

// Where a task's real signal rows live: pairs of batch rows for the convolution
// (row1 < 0 when B is odd and this is the last pair), one row of k per task for
// the spectrum.
struct SignalLayout {
  int64_t B, H, L;
  bool paired;
  __device__ void rows(int64_t task, int64_t& row0, int64_t& row1, int64_t& head) const {
    if (!paired) {
      row0 = task * L;
      row1 = -1;
      head = task;
      return;
    }
    const int64_t pairs = (B + 1) / 2;
    head = task / pairs;
    const int64_t b0 = 2 * (task % pairs);
    row0 = (b0 * H + head) * L;
    row1 = b0 + 1 < B ? ((b0 + 1) * H + head) * L : -1;
  }
};

template <typename scalar_t>
struct Signal {
  const scalar_t* x;         // u [B, H, L] or k [H, Lk]
  const scalar_t* pregate;   // nullable
  const scalar_t* postgate;  // nullable
  scalar_t* y;               // output (convolution), nullptr for the spectrum
  SignalLayout layout;
  // Two-pass path only (set by run_tasks): per task, which of its rows hold a
  // non-finite value (bit 0: row0, bit 1: row1).
  const int* nonfinite_rows = nullptr;
};

// Non-finite input. An FFT spreads a NaN or Inf over its whole row, and the
// complex arithmetic would carry it into the other row sharing the signal (a
// different sequence). So a row holding one is transformed as zeros and its
// output written as NaN: that row comes out NaN, as any FFT convolution makes
// it, and its partner stays exact. The CPU kernels do the same.
constexpr int kNonfiniteRow0 = 1, kNonfiniteRow1 = 2;

// x·0 is NaN exactly when x is NaN or ±Inf.
__device__ __forceinline__ int nonfinite_bits(float probe0, float probe1) {
  return (isnan(probe0) ? kNonfiniteRow0 : 0) | (isnan(probe1) ? kNonfiniteRow1 : 0);
}

// exp(-2πi·num/den) from the exact integer phase.
__device__ __forceinline__ float2 unit_root(int64_t num, int64_t den) {
  float s, c;
  sincospif(-2.0f * static_cast<float>(num % den) / static_cast<float>(den), &s, &c);
  return make_float2(c, s);
}

__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
  return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__device__ __forceinline__ float2 cmul_conj(float2 a, float2 b) {  // a·conj(b)
  return make_float2(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y);
}

// W_radix^q from the table of 16th roots of unity.
__device__ __forceinline__ float2 dft_coefficient(const float2* w16, int q, int radix) {
  return w16[(q % radix) * (static_cast<int>(kRadix) / radix)];
}

// ---- one column of a column stage, FFMA ------------------------------------
// x[j·stride] for j < radix (the points of one DFT input, in registers):
// forward out[f] = tw^{f·m}·Σ_{j < rows_in} W^{f·j}·x[j]; inverse
// out[j] = Σ_f conj(W^{f·j})·conj(tw^{f·m})·x[f] for j < rows_out.
// Radix 16 (every stage but the one small factor of N) is fftconv.h's dft16,
// factored 4 × 4 as in cpu.cpp: a direct 16-term sum per output has 2-3x the
// fp32 rounding error of an FFT. Radices 2, 4 and 8 sum directly.
template <bool kInverse, typename Load, typename Store>
__device__ __forceinline__ void column_ffma(const float2* w16, int radix, int64_t stride, int64_t m, int rows_in,
                                            int rows_out, Load load, Store store) {
  float xr[kRadix], xi[kRadix];
#pragma unroll
  for (int j = 0; j < kRadix; ++j) {
    xr[j] = xi[j] = 0.f;
    if (j < rows_in) {
      float2 v = load(j);
      if (kInverse) v = cmul_conj(v, unit_root(j * m, radix * stride));
      xr[j] = v.x;
      xi[j] = v.y;
    }
  }
  if (radix == kRadix) {
    dft16<float, float, kInverse>(xr, xi);
#pragma unroll
    for (int f = 0; f < kRadix; ++f) {
      if (f >= rows_out) break;
      float2 v = make_float2(xr[dft16_slot(f)], xi[dft16_slot(f)]);
      if (!kInverse) v = cmul(v, unit_root(f * m, radix * stride));
      store(f, v);
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kRadix / 2; ++i) {  // radix <= 8
    if (i >= rows_out) break;
    float2 acc = make_float2(0.f, 0.f);
#pragma unroll
    for (int j = 0; j < kRadix / 2; ++j) {
      if (j >= rows_in) break;
      const float2 w = dft_coefficient(w16, i * j, radix);
      acc = kInverse ? make_float2(acc.x + xr[j] * w.x + xi[j] * w.y, acc.y + xi[j] * w.x - xr[j] * w.y)
                     : make_float2(acc.x + xr[j] * w.x - xi[j] * w.y, acc.y + xr[j] * w.y + xi[j] * w.x);
    }
    if (!kInverse) acc = cmul(acc, unit_root(i * m, radix * stride));
    store(i, acc);
  }
}

// A column stage over a block of M points in shared memory (every thread a column).
template <bool kInverse>
__device__ void shared_stage_ffma(float* re, float* im, int64_t M, int radix, int64_t stride, int rows_in,
                                  int rows_out, const float2* w16) {
  const int64_t columns = M / radix;
  for (int64_t c = threadIdx.x; c < columns; c += blockDim.x) {
    const int64_t base = (c / stride) * radix * stride + c % stride;
    column_ffma<kInverse>(
        w16, radix, stride, c % stride, rows_in, rows_out,
        [&](int j) { return make_float2(re[base + j * stride], im[base + j * stride]); },
        [&](int i, float2 v) {
          re[base + i * stride] = v.x;
          im[base + i * stride] = v.y;
        });
  }
}

// ---- radix-16 column stage on tensor cores ----------------------------------

// Operands go to the tensor cores as bf16 hi + lo pairs (split_float2): 16
// significand bits and fp32's range. One bf16 or fp16 rounding per operand and
// stage would cost 2-2.5x the error of an fp32 FFT (the tests' reference); the
// split, multiplied as hi·hi + hi·lo + lo·hi, keeps the stages within the fp32
// FFMA stages' error, and fp16 data can no longer overflow in the stages.
using mma_t = __nv_bfloat16;

// The A fragments of scale·F16 (real, imaginary, negated imaginary), F16[r, c] = W16^{r·c}.
// Fragment register i holds rows g (+8 for i odd) and columns 2t, 2t+1 (+8 for i >= 2).
struct Dft16Fragments {
  SplitFragment<4> fr, fi, nfi;
};
__device__ __forceinline__ Dft16Fragments dft16_fragments(const float2* w16, float scale) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  Dft16Fragments f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i % 2) * 8, col = 2 * t + (i / 2) * 8;
    const float2 w0 = w16[(row * col) % 16], w1 = w16[(row * (col + 1)) % 16];
    split_float2<mma_t>(scale * w0.x, scale * w1.x, f.fr.hi[i], f.fr.lo[i]);
    split_float2<mma_t>(scale * w0.y, scale * w1.y, f.fi.hi[i], f.fi.lo[i]);
    split_float2<mma_t>(-scale * w0.y, -scale * w1.y, f.nfi.hi[i], f.nfi.lo[i]);
  }
  return f;
}

// A radix-16 column stage over a block of M points in shared memory: each warp
// takes 16×8 tiles (16 DFT inputs j × 8 consecutive columns m) of the
// [blocks, 16, stride] view. Needs stride % 8 == 0.
template <bool kInverse>
__device__ void shared_stage_mma(float* re, float* im, int64_t M, int64_t stride, float scale, const float2* w16) {
  const Dft16Fragments f = dft16_fragments(w16, scale);
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t span = kRadix * stride, tiles = M / (kRadix * 8);
  for (int64_t tile = threadIdx.x / 32; tile < tiles; tile += kWarps) {
    const int64_t block = tile / (stride / 8), m = (tile % (stride / 8)) * 8 + g;
    float* xr = re + block * span + m;
    float* xi = im + block * span + m;
    // B fragment: rows (k = j) 2t, 2t+1 and 2t+8, 2t+9 of column m.
    SplitFragment<2> br, bi;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float2 v[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = 2 * t + half * 8 + e;
        v[e] = make_float2(xr[j * stride], xi[j * stride]);
        if (kInverse) v[e] = cmul_conj(v[e], unit_root(j * m, span));
      }
      split_float2<mma_t>(v[0].x, v[1].x, br.hi[half], br.lo[half]);
      split_float2<mma_t>(v[0].y, v[1].y, bi.hi[half], bi.lo[half]);
    }
    float yr[4] = {0.f, 0.f, 0.f, 0.f}, yi[4] = {0.f, 0.f, 0.f, 0.f};
    // Forward: Yr = Fr·Xr - Fi·Xi, Yi = Fi·Xr + Fr·Xi; inverse with conj(F).
    mma_m16n8k16_split<mma_t>(yr, f.fr, br);
    mma_m16n8k16_split<mma_t>(yr, kInverse ? f.fi : f.nfi, bi);
    mma_m16n8k16_split<mma_t>(yi, kInverse ? f.nfi : f.fi, br);
    mma_m16n8k16_split<mma_t>(yi, f.fr, bi);
    __syncwarp();  // every lane's B reads are done before any lane writes the tile
    // C fragment: rows (f) g and g+8, columns 2t, 2t+1 of the tile.
    const int64_t m_out0 = (tile % (stride / 8)) * 8 + 2 * t;
    float* outr = re + block * span + m_out0;
    float* outi = im + block * span + m_out0;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int f = g + (e / 2) * 8, dm = e % 2;
      float2 v = make_float2(yr[e], yi[e]);
      if (!kInverse) v = cmul(v, unit_root(f * (m_out0 + dm), span));
      outr[f * stride + dm] = v.x;
      outi[f * stride + dm] = v.y;
    }
  }
}

// ---- the last stage, fused with the spectrum multiply ------------------------

// The convolution's part of the last stage on one row's forward DFT (X[f] in
// register dft16_slot(f)): Y = X·spectrum·scale on the kept columns, zero
// elsewhere, then the inverse row DFT written to (re, im).
__device__ __forceinline__ void convolve_row(float* re, float* im, float (&xr)[kRadix], float (&xi)[kRadix],
                                             const float* spec_re, const float* spec_im, int keep, float scale) {
  float yr[kRadix], yi[kRadix];  // Y[f] in register f: dft16 reads its input in natural order
#pragma unroll
  for (int f = 0; f < kRadix; ++f) {
    yr[f] = yi[f] = 0.f;
    if (f >= keep && f < kRadix - keep) continue;
    const float2 spec = make_float2(spec_re[f] * scale, spec_im[f] * scale);
    const float2 prod = cmul(make_float2(xr[dft16_slot(f)], xi[dft16_slot(f)]), spec);
    yr[f] = prod.x;
    yi[f] = prod.y;
  }
  dft16<float, float, true>(yr, yi);
#pragma unroll
  for (int n = 0; n < kRadix; ++n) {
    re[n] = yr[dft16_slot(n)];
    im[n] = yi[dft16_slot(n)];
  }
}

// Per 16-point row, in registers: the forward row DFT X = x·F16 (dft16,
// factored 4 × 4), Y = X·spectrum·scale on the kept columns f (zero elsewhere:
// the spectrum outside the kept blocks is neither read nor used), the inverse
// row DFT y = Y·conj(F16), in place. Spectrum mode: X·mask/N goes to spec_out
// instead.
template <bool kSpectrum>
__device__ void last_stage(float* re, float* im, int64_t M, int64_t block_offset, const float* spec_re,
                           const float* spec_im, float* out_re, float* out_im, int keep_blocks, float scale) {
  for (int64_t row = threadIdx.x; row < M / kRadix; row += blockDim.x) {
    float xr[kRadix], xi[kRadix];
#pragma unroll
    for (int j = 0; j < kRadix; ++j) {
      xr[j] = re[row * kRadix + j];
      xi[j] = im[row * kRadix + j];
    }
    dft16<float, float, false>(xr, xi);
    const int64_t row_pos = block_offset + row * kRadix;
    if constexpr (kSpectrum) {
#pragma unroll
      for (int f = 0; f < kRadix; ++f) {
        const float mask = position_kept(row_pos + f, keep_blocks) ? scale : 0.f;
        out_re[row_pos + f] = xr[dft16_slot(f)] * mask;
        out_im[row_pos + f] = xi[dft16_slot(f)] * mask;
      }
    } else {
      convolve_row(re + row * kRadix, im + row * kRadix, xr, xi, spec_re + row_pos, spec_im + row_pos, keep_blocks, scale);
    }
  }
}

// ---- the fused kernel ------------------------------------------------------

template <typename scalar_t>
struct FusedArgs {
  Signal<scalar_t> signal;
  float* scratch;            // [chunk tasks, 2, N] (two-pass) or nullptr
  const float* spectrum;     // [H, 2, N] (convolution)
  float* spectrum_out;       // [H, 2, N] (spectrum mode)
  int64_t N, task_begin, block_len;
  int first_stage, keep_blocks;
  DeviceStages stages;
};

__device__ __forceinline__ void init_roots(float2* w16) {
  if (threadIdx.x < kRadix) w16[threadIdx.x] = unit_root(threadIdx.x, kRadix);
}

template <typename scalar_t>
__device__ __forceinline__ float to_float(scalar_t v) {
  return static_cast<float>(v);
}

// kFromScratch: the block comes from (and goes back to) the two-pass scratch;
// otherwise from u·pregate and to y·postgate. kSpectrum: forward only, to spectrum_out.
template <typename scalar_t, bool kTensorCores, bool kFromScratch, bool kSpectrum>
__global__ void __launch_bounds__(kThreads) fused_kernel(const FusedArgs<scalar_t> a) {
  MLX_DYNAMIC_SHARED(float, smem);
  MLX_SHARED(float2[kRadix], w16);
  MLX_SHARED(int, nonfinite_rows);
  const int64_t M = a.block_len, blocks_per_task = a.N / M;
  const int64_t local_task = blockIdx.x / blocks_per_task, block = blockIdx.x % blocks_per_task;
  const int64_t task = a.task_begin + local_task, block_offset = block * M;
  float* re = smem;
  float* im = smem + M;
  init_roots(w16);

  int64_t row0, row1, head;
  a.signal.layout.rows(task, row0, row1, head);
  const int64_t L = a.signal.layout.L;
  float* scratch_re = kFromScratch ? a.scratch + local_task * 2 * a.N + block_offset : nullptr;
  float* scratch_im = kFromScratch ? scratch_re + a.N : nullptr;
  // From u, the CTA holds the whole signal (M = N): it finds its non-finite rows itself.
  constexpr bool kFindNonfinite = !kFromScratch && !kSpectrum;
  if (kFindNonfinite) {
    if (threadIdx.x == 0) nonfinite_rows = 0;
    __syncthreads();
  }
  float probe0 = 0.f, probe1 = 0.f;
  for (int64_t n = threadIdx.x; n < M; n += blockDim.x) {
    if (kFromScratch) {
      re[n] = scratch_re[n];
      im[n] = scratch_im[n];
    } else {
      float v0 = 0.f, v1 = 0.f;
      if (n < L) {
        const scalar_t* pre = a.signal.pregate;
        v0 = to_float(a.signal.x[row0 + n]) * (pre ? to_float(pre[row0 + n]) : 1.f);
        if (row1 >= 0) v1 = to_float(a.signal.x[row1 + n]) * (pre ? to_float(pre[row1 + n]) : 1.f);
      }
      re[n] = v0;
      im[n] = v1;
      probe0 += v0 * 0.f;
      probe1 += v1 * 0.f;
    }
  }
  int nonfinite = 0;
  if (kFindNonfinite) {
    if (const int bits = nonfinite_bits(probe0, probe1)) atomicOr(&nonfinite_rows, bits);
    __syncthreads();
    nonfinite = nonfinite_rows;
    if (nonfinite) {  // uniform across the CTA
      for (int64_t n = threadIdx.x; n < M; n += blockDim.x) {
        if (nonfinite & kNonfiniteRow0) re[n] = 0.f;
        if (nonfinite & kNonfiniteRow1) im[n] = 0.f;
      }
    }
  }
  __syncthreads();

  const DeviceStages& st = a.stages;
  const int last = st.num - 1;
  float tc_scale_fix = 1.f;
  for (int s = a.first_stage; s < last; ++s) {
    const int rows_in = (s == 0 && !kFromScratch) ? static_cast<int>((L + st.stride[s] - 1) / st.stride[s]) : st.radix[s];
    bool on_tensor_cores = false;
    if constexpr (kTensorCores) {
      on_tensor_cores = st.radix[s] == kRadix && st.stride[s] % 8 == 0;
      if (on_tensor_cores) {
        shared_stage_mma<false>(re, im, M, st.stride[s], 0.25f, w16);
        tc_scale_fix *= 4.f;
      }
    }
    if (!on_tensor_cores) shared_stage_ffma<false>(re, im, M, st.radix[s], st.stride[s], rows_in, st.radix[s], w16);
    __syncthreads();
  }

  if (kSpectrum) {
    float* out_re = a.spectrum_out + head * 2 * a.N;
    last_stage<true>(re, im, M, block_offset, nullptr, nullptr, out_re, out_re + a.N, a.keep_blocks,
                     1.f / static_cast<float>(a.N));
    return;
  }
  const float* spec_re = a.spectrum + head * 2 * a.N;
  last_stage<false>(re, im, M, block_offset, spec_re, spec_re + a.N, nullptr, nullptr, a.keep_blocks, tc_scale_fix);
  __syncthreads();

  for (int s = last - 1; s >= a.first_stage; --s) {
    const int rows_out = (s == 0 && !kFromScratch) ? static_cast<int>((L + st.stride[s] - 1) / st.stride[s]) : st.radix[s];
    bool on_tensor_cores = false;
    if constexpr (kTensorCores) {
      on_tensor_cores = st.radix[s] == kRadix && st.stride[s] % 8 == 0;
      if (on_tensor_cores) shared_stage_mma<true>(re, im, M, st.stride[s], 1.f, w16);
    }
    if (!on_tensor_cores) shared_stage_ffma<true>(re, im, M, st.radix[s], st.stride[s], st.radix[s], rows_out, w16);
    __syncthreads();
  }

  for (int64_t n = threadIdx.x; n < M; n += blockDim.x) {
    if (kFromScratch) {
      scratch_re[n] = re[n];
      scratch_im[n] = im[n];
    } else if (n < L) {
      const scalar_t* post = a.signal.postgate;
      const float y0 = nonfinite & kNonfiniteRow0 ? NAN : re[n], y1 = nonfinite & kNonfiniteRow1 ? NAN : im[n];
      a.signal.y[row0 + n] = static_cast<scalar_t>(y0 * (post ? to_float(post[row0 + n]) : 1.f));
      if (row1 >= 0) a.signal.y[row1 + n] = static_cast<scalar_t>(y1 * (post ? to_float(post[row1 + n]) : 1.f));
    }
  }
}

// ---- two-pass column stages through global memory ---------------------------

// One stage s of the leading (> 16K-point) stages on the scratch, one thread per
// column. Stage 0 reads u·pregate (forward) or writes y·postgate (inverse).
template <typename scalar_t, bool kInverse>
__global__ void __launch_bounds__(kThreads) global_stage_kernel(const Signal<scalar_t> signal, float* scratch,
                                                                int64_t N, int64_t tasks, int64_t task_begin,
                                                                int stage, int radix, int64_t stride) {
  MLX_SHARED(float2[kRadix], w16);
  init_roots(w16);
  __syncthreads();
  const int64_t columns = N / radix;
  const int64_t L = signal.layout.L;
  for (int64_t idx = blockIdx.x * int64_t{kThreads} + threadIdx.x; idx < tasks * columns;
       idx += int64_t{gridDim.x} * kThreads) {
    const int64_t local_task = idx / columns, c = idx % columns;
    const int64_t base = (c / stride) * radix * stride + c % stride;
    float* xr = scratch + local_task * 2 * N + base;
    float* xi = xr + N;
    int64_t row0, row1, head;
    signal.layout.rows(task_begin + local_task, row0, row1, head);
    const int nonfinite = signal.nonfinite_rows ? signal.nonfinite_rows[task_begin + local_task] : 0;
    // Stage 0 has one block (base = m): point j of the column is time j·stride + m.
    const int rows_holding = static_cast<int>(std::min<int64_t>(radix, (L - base + stride - 1) / stride));
    if (!kInverse) {
      const scalar_t* pre = signal.pregate;
      column_ffma<false>(
          w16, radix, stride, c % stride, stage == 0 ? std::max(rows_holding, 0) : radix, radix,
          [&](int j) {
            if (stage != 0) return make_float2(xr[j * stride], xi[j * stride]);
            const int64_t t = base + j * stride;
            const float v0 = nonfinite & kNonfiniteRow0
                                 ? 0.f
                                 : to_float(signal.x[row0 + t]) * (pre ? to_float(pre[row0 + t]) : 1.f);
            const float v1 = row1 < 0 || nonfinite & kNonfiniteRow1
                                 ? 0.f
                                 : to_float(signal.x[row1 + t]) * (pre ? to_float(pre[row1 + t]) : 1.f);
            return make_float2(v0, v1);
          },
          [&](int i, float2 v) {
            xr[i * stride] = v.x;
            xi[i * stride] = v.y;
          });
    } else {
      const scalar_t* post = signal.postgate;
      column_ffma<true>(
          w16, radix, stride, c % stride, radix, stage == 0 ? std::max(rows_holding, 0) : radix,
          [&](int j) { return make_float2(xr[j * stride], xi[j * stride]); },
          [&](int i, float2 v) {
            if (stage != 0) {
              xr[i * stride] = v.x;
              xi[i * stride] = v.y;
              return;
            }
            const int64_t t = base + i * stride;
            const float y0 = nonfinite & kNonfiniteRow0 ? NAN : v.x, y1 = nonfinite & kNonfiniteRow1 ? NAN : v.y;
            signal.y[row0 + t] = static_cast<scalar_t>(y0 * (post ? to_float(post[row0 + t]) : 1.f));
            if (row1 >= 0) signal.y[row1 + t] = static_cast<scalar_t>(y1 * (post ? to_float(post[row1 + t]) : 1.f));
          });
    }
  }
}

// For the two-pass path, whose stage 0 sees one column of a row at a time: each
// task's non-finite rows (bits as above), one CTA per task.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) find_nonfinite_rows_kernel(const Signal<scalar_t> signal, int* flags) {
  MLX_SHARED(int, bits);
  if (threadIdx.x == 0) bits = 0;
  __syncthreads();
  int64_t row0, row1, head;
  signal.layout.rows(blockIdx.x, row0, row1, head);
  const scalar_t* pre = signal.pregate;
  float probe0 = 0.f, probe1 = 0.f;
  for (int64_t t = threadIdx.x; t < signal.layout.L; t += blockDim.x) {
    probe0 += to_float(signal.x[row0 + t]) * (pre ? to_float(pre[row0 + t]) : 1.f) * 0.f;
    if (row1 >= 0) probe1 += to_float(signal.x[row1 + t]) * (pre ? to_float(pre[row1 + t]) : 1.f) * 0.f;
  }
  if (const int found = nonfinite_bits(probe0, probe1)) atomicOr(&bits, found);
  __syncthreads();
  if (threadIdx.x == 0) flags[blockIdx.x] = bits;
}

// ---- host side ---------------------------------------------------------------

struct HostPlan {
  DeviceStages stages;
  std::vector<Stage> host;
  int first_fused;  // first stage whose blocks fit in shared memory
  int64_t block_len;
};

// Points per fused CTA: kMaxBlock where a CTA may hold its 2·kMaxBlock floats
// of shared memory (A100, H100), else the largest power of two that fits (99 KiB
// per CTA on sm_86/sm_89, which run the sm_80 build); w16 takes the rest.
inline int64_t max_block_points() {
  const int64_t limit = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  int64_t points = kMaxBlock;
  const int64_t w16_bytes = kRadix * static_cast<int64_t>(sizeof(float2));
  while (points > kRadix && 2 * points * static_cast<int64_t>(sizeof(float)) + w16_bytes > limit) points /= 2;
  return points;
}

inline HostPlan host_plan(int64_t N) {
  const int64_t max_block = max_block_points();
  HostPlan p;
  p.host = monarch_stages(N);
  TORCH_CHECK(static_cast<int>(p.host.size()) <= kMaxStages, "fft_conv: FFT size ", N, " is too large");
  p.stages.num = static_cast<int>(p.host.size());
  p.first_fused = -1;
  for (int s = 0; s < p.stages.num; ++s) {
    p.stages.radix[s] = static_cast<int>(p.host[s].radix);
    p.stages.stride[s] = static_cast<int>(p.host[s].stride);
    if (p.first_fused < 0 && p.host[s].radix * p.host[s].stride <= max_block) p.first_fused = s;
  }
  p.block_len = p.host[p.first_fused].radix * p.host[p.first_fused].stride;
  return p;
}

template <typename scalar_t, bool kTensorCores, bool kFromScratch, bool kSpectrum>
void launch_fused(const FusedArgs<scalar_t>& args, int64_t tasks, cudaStream_t stream) {
  auto kernel = fused_kernel<scalar_t, kTensorCores, kFromScratch, kSpectrum>;
  const size_t smem = 2 * args.block_len * sizeof(float);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const int64_t grid = tasks * (args.N / args.block_len);
  TORCH_CHECK(grid <= std::numeric_limits<int32_t>::max(), "fft_conv: too many CTAs (", grid, ")");
  MLX_LAUNCH_KERNEL(kernel, static_cast<unsigned>(grid), kThreads, smem, stream, args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kInverse>
void launch_global_stage(const Signal<scalar_t>& signal, float* scratch, int64_t N, int64_t tasks, int64_t task_begin,
                         const HostPlan& plan, int s, cudaStream_t stream) {
  const int64_t work = tasks * (N / plan.host[s].radix);
  const int64_t grid = std::min<int64_t>(ceil_div(work, kThreads), int64_t{1} << 20);
  MLX_LAUNCH_KERNEL(global_stage_kernel<scalar_t, kInverse>, static_cast<unsigned>(grid), kThreads, 0, stream,
      signal, scratch, N, tasks, task_begin, s, static_cast<int>(plan.host[s].radix), plan.host[s].stride);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs the convolution (kSpectrum = false) or the spectrum (true) for all tasks.
template <typename scalar_t, bool kTensorCores, bool kSpectrum>
void run_tasks(const Signal<scalar_t>& signal, int64_t tasks, int64_t N, const float* spectrum, float* spectrum_out,
               int64_t keep_blocks, const at::TensorOptions& options) {
  const HostPlan plan = host_plan(N);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  FusedArgs<scalar_t> args{signal, nullptr, spectrum, spectrum_out, N, 0, plan.block_len, plan.first_fused,
                           static_cast<int>(keep_blocks), plan.stages};
  if (plan.first_fused == 0) {
    launch_fused<scalar_t, kTensorCores, false, kSpectrum>(args, tasks, stream);
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(tasks, kScratchFloats / (2 * N)));
  at::Tensor scratch = at::empty({chunk, 2, N}, options.dtype(at::kFloat));
  args.scratch = scratch.data_ptr<float>();
  at::Tensor nonfinite_rows;
  if constexpr (!kSpectrum) {
    TORCH_CHECK(tasks <= std::numeric_limits<int32_t>::max(), "fft_conv: too many CTAs (", tasks, ")");
    nonfinite_rows = at::empty({tasks}, options.dtype(at::kInt));
    args.signal.nonfinite_rows = nonfinite_rows.data_ptr<int>();
    MLX_LAUNCH_KERNEL(find_nonfinite_rows_kernel<scalar_t>, static_cast<unsigned>(tasks), kThreads, 0, stream,
                      args.signal, nonfinite_rows.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  for (int64_t begin = 0; begin < tasks; begin += chunk) {
    const int64_t count = std::min(chunk, tasks - begin);
    args.task_begin = begin;
    for (int s = 0; s < plan.first_fused; ++s) {
      launch_global_stage<scalar_t, false>(args.signal, args.scratch, N, count, begin, plan, s, stream);
    }
    launch_fused<scalar_t, kTensorCores, true, kSpectrum>(args, count, stream);
    if constexpr (!kSpectrum) {
      for (int s = plan.first_fused - 1; s >= 0; --s) {
        launch_global_stage<scalar_t, true>(args.signal, args.scratch, N, count, begin, plan, s, stream);
      }
    }
  }
}


// The fp16/bf16 tensor-core convolutions, instantiated in fftconv_half.cu.
void convolve_half(const Signal<at::Half>& signal, int64_t tasks, int64_t N, const float* spectrum,
                   int64_t keep_blocks, const at::TensorOptions& options);
void convolve_bfloat16(const Signal<at::BFloat16>& signal, int64_t tasks, int64_t N, const float* spectrum,
                       int64_t keep_blocks, const at::TensorOptions& options);

}  // namespace mlx_kernels::fftconv::detail
