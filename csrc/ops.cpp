// The one place every op schema lives. Kernels register their CPU and CUDA
// implementations from their family folders (csrc/<family>/cpu.cpp, *.cu);
// the fake (meta) implementations live in python/mlx_kernels/ops.py.
//
// This file also holds the Python module init: `from mlx_kernels import _C`
// loads the library, whose static initializers register the ops; the module
// itself has only _C.cpu_isa() and _C.cpu_isa_available() (not torch ops: they
// take no tensor).

#include <Python.h>

#include "common/registration.h"

#ifndef MLX_EMU
#include <c10/util/Exception.h>

#include "common/cpu_isa.h"
#endif

MLX_LIBRARY(m) {
  // int8 mixed-precision GEMM (LLM.int8)
  m.def("int8_mm(Tensor a_i8, Tensor b_i8) -> Tensor");
  m.def("int8_vectorwise_quant(Tensor x, float threshold=0.0) -> (Tensor x_i8, Tensor row_absmax, Tensor outlier_cols)");
  m.def("int8_gemm(Tensor x, Tensor w_i8, Tensor w_absmax, Tensor? bias=None, float threshold=6.0) -> Tensor");

  // bipolar-INT arbitrary-precision GEMM
  m.def("bipolar_pack(Tensor values, int bits) -> Tensor");
  m.def("bipolar_unpack(Tensor planes, int K) -> Tensor");
  m.def("bipolar_gemm(Tensor a_planes, Tensor w_planes, int K) -> Tensor");
  m.def("bipolar_quantize(Tensor x, int bits) -> (Tensor planes, Tensor scale)");
  m.def("bipolar_linear(Tensor x, Tensor w_planes, Tensor w_scale, int x_bits, Tensor? bias=None) -> Tensor");
  // Internal (benchmark only): raw mma.sync throughput, kind "b1_and" | "s4" | "s8"; CUDA only.
  m.def("bipolar_mma_peak(Tensor like, str kind, int blocks, int iterations) -> Tensor");

  // Tensor-Core block-sparse SpMM (SMaT)
  m.def("bsr_spmm(Tensor crow, Tensor col, Tensor blocks, Tensor b, int m, Tensor? row_perm=None) -> Tensor");
  // Internal: bsr_spmm without the index-value checks on CUDA (no device sync),
  // for BlockSparseMatrix, which checks its indices once when it is built. The
  // CPU kernel checks them anyway: its memory safety rests on them.
  m.def("bsr_spmm_unchecked(Tensor crow, Tensor col, Tensor blocks, Tensor b, int m, Tensor? row_perm=None) -> Tensor");
  // (a [m, n] · b [k, n]ᵀ) sampled at the stored blocks of an [m, k] BCSR
  // structure: blocks [nblocks, br, bc], 0 in the padding. bsr_spmm's d/dblocks.
  m.def("bsr_sddmm(Tensor crow, Tensor col, Tensor a, Tensor b, int br, int bc, Tensor? row_perm=None) -> Tensor");
  // Internal: bsr_sddmm without the index-value checks on CUDA (bsr_spmm's backward).
  m.def("bsr_sddmm_unchecked(Tensor crow, Tensor col, Tensor a, Tensor b, int br, int bc, Tensor? row_perm=None) -> Tensor");
  // Internal (CPU) helpers of BlockSparseMatrix: SMaT row reordering and CSR -> BCSR.
  m.def("bsr_reorder_rows(Tensor crow, Tensor col, int k, int block_rows, int block_cols) -> Tensor");
  // Internal (CPU, int64 indices): bsr_spmm on blocks packed as row-major bit
  // maps, BlockSparseMatrix's CPU form (see python/mlx_kernels/bsr.py).
  m.def("bsr_spmm_packed(Tensor crow, Tensor col, Tensor row_words, Tensor row_values, Tensor word_blocks, Tensor word_cols, Tensor values, Tensor b, int m, int block_rows, int block_cols, Tensor? row_perm=None) -> Tensor");
  m.def("bsr_from_csr(Tensor crow, Tensor col, Tensor values, int k, int block_rows, int block_cols, Tensor? row_perm=None) -> (Tensor bcrow, Tensor bcol, Tensor blocks)");

  // Atomic row-wise SpGEMM (SMASH)
  m.def("spgemm_csr(Tensor a_crow, Tensor a_col, Tensor a_val, Tensor b_crow, Tensor b_col, Tensor b_val, int n) -> (Tensor c_crow, Tensor c_col, Tensor c_val)");

  // FFT-as-matmul convolution (FlashFFTConv)
  m.def("fft_conv(Tensor u, Tensor k, Tensor? pregate=None, Tensor? postgate=None) -> Tensor");
  // Internal: the kernel spectrum k_f [H, 2, N] (Monarch order, /N, kept blocks
  // only) and the convolution with a given spectrum (FFTConv's cache, freq_keep).
  m.def("fft_conv_spectrum(Tensor k, int seqlen, int keep_blocks) -> Tensor");
  m.def("fft_conv_spectral(Tensor u, Tensor k_f, int keep_blocks, Tensor? pregate=None, Tensor? postgate=None) -> Tensor");

  // Shared-prefix attention (Hydragen)
  m.def("attention_with_lse(Tensor q, Tensor k, Tensor v, bool causal=False, float? scale=None) -> (Tensor out, Tensor lse)");
  m.def("merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) -> (Tensor out, Tensor lse)");
  m.def("shared_prefix_attention(Tensor q, Tensor prefix_k, Tensor prefix_v, Tensor suffix_k, Tensor suffix_v, Tensor? suffix_lens=None, float? scale=None) -> Tensor");
  // Internal: attention_with_lse where sequence b has only its first key_lens[b]
  // keys (causal aligns the last query with the last of them). The suffix pass
  // of the hierarchical (nested-prefix) helper in python/mlx_kernels/attention.py.
  m.def("attention_with_lse_ragged(Tensor q, Tensor k, Tensor v, Tensor key_lens, bool causal=False, float? scale=None) -> (Tensor out, Tensor lse)");
}

// mlx_kernels._C, or mlx_kernels._emu for the SIMT emulator build.
#ifdef MLX_EMU
#define MLX_MODULE_NAME _emu
#else
#define MLX_MODULE_NAME _C
#endif

#ifdef MLX_EMU
static PyMethodDef* const module_methods = nullptr;
#else
// The ISA path the CPU kernels take now (MLX_CPU_ISA applied; RuntimeError on a
// bad value), and the best this CPU executes: "scalar", "avx2" or "avx512".
static PyObject* cpu_isa_py(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(mlx_kernels::cpu_isa_name(mlx_kernels::cpu_isa("mlx_kernels.cpu_isa")));
  } catch (const c10::Error& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what_without_backtrace());
    return nullptr;
  }
}
static PyObject* cpu_isa_available_py(PyObject*, PyObject*) {
  return PyUnicode_FromString(mlx_kernels::cpu_isa_name(mlx_kernels::cpu_isa_available()));
}
static PyMethodDef module_methods[] = {
    {"cpu_isa", cpu_isa_py, METH_NOARGS, "The ISA path the CPU kernels take now (MLX_CPU_ISA applied)."},
    {"cpu_isa_available", cpu_isa_available_py, METH_NOARGS, "The best ISA path this CPU executes."},
    {nullptr, nullptr, 0, nullptr}};
#endif

PyMODINIT_FUNC MLX_CONCAT(PyInit_, MLX_MODULE_NAME)(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, MLX_STRINGIFY(MLX_MODULE_NAME), nullptr, -1, module_methods};
  return PyModule_Create(&module);
}
