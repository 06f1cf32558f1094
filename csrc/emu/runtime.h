// The SIMT emulator's runtime: runs a __global__ function's own code on the
// CPU, one stackful fiber per CUDA thread.
//
// Execution. A launch runs its blocks on a few OS threads, each block on one of
// them with its own shared memory. Inside a block, every CUDA thread is a fiber
// that runs until it reaches a rendezvous point (__syncthreads, a warp
// collective: shuffles, votes, __syncwarp, mma.sync, ldmatrix) or exits; the
// scheduler then resumes another runnable thread, picked at random (seeded per
// launch and block). So warps, and lanes within a warp, interleave in an
// arbitrary order between rendezvous points: code that forgot a barrier reads
// data another thread has not written yet and gives a wrong answer, instead of
// passing because threads happened to run in order.
//
// Checks, each raising an error that names the kernel's launch site, the block
// and the thread: launch limits of an H100 (threads per block, grid.y/z, dynamic
// shared memory and its opt-in), a deadlock (threads waiting at a barrier or a
// warp collective that can never complete), lanes of a warp that disagree at a
// collective or name an exited lane in its mask, shared-memory accesses of the
// primitives outside the block's shared memory, __trap(), and writes past the
// end of any shared-memory variable (guard bytes checked when the block ends;
// with AddressSanitizer they are poisoned, so reads are caught too).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace mlx_emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// The CUDA thread the calling fiber is (threadIdx etc.); only valid inside a kernel.
struct ThreadCoords {
  Dim3 thread_idx, block_idx, block_dim, grid_dim;
};
const ThreadCoords& coords();

// Runs kernel_body once per CUDA thread of the grid. `site` names the launch
// ("kernel_name at file:line") for error messages; `kernel_key` identifies the
// kernel for its cudaFuncSetAttribute opt-in. Throws c10::Error on any failure.
void launch(const std::string& site, const void* kernel_key, Dim3 grid, Dim3 block, size_t dynamic_smem,
            const std::function<void()>& kernel_body);

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
bool set_max_dynamic_smem(const void* kernel_key, int bytes);

// The scheduling seed of later launches (0: MLX_EMU_SEED, default 0x5eed). Each
// launch mixes it with its launch site and each block with its index.
void set_seed(uint64_t seed);

// --- device side: what the primitives in cuda_emu.h are built on --------------

[[noreturn]] void device_error(const std::string& message);

// __syncthreads at file:line. All threads of one barrier must reach it at the
// same place: a barrier in divergent code is reported (as compute-sanitizer's
// synccheck does), even though the hardware would let it pass.
void sync_threads(const char* file, int line);

// A warp collective over the lanes of `mask`: each lane passes its input; when
// the last lane of the mask arrives, combine(ins, outs) runs once with every
// participating lane's input and output (nullptr for lanes outside the mask),
// then every lane resumes with its output filled. `what` names the primitive;
// all lanes of one collective must name the same one with the same mask.
using CombineFn = void (*)(const void* const* ins, void* const* outs, const void* context);
void warp_collective(const char* what, unsigned mask, const void* in, void* out, CombineFn combine,
                     const void* context);

unsigned active_mask();  // the lanes of the caller's warp that have not exited

template <typename In, typename Out, typename Combine>
Out collective(const char* what, unsigned mask, const In& in, const Combine& combine) {
  Out out{};
  warp_collective(
      what, mask, &in, &out,
      [](const void* const* ins, void* const* outs, const void* context) {
        const In* typed_in[32];
        Out* typed_out[32];
        for (int lane = 0; lane < 32; ++lane) {
          typed_in[lane] = static_cast<const In*>(ins[lane]);
          typed_out[lane] = static_cast<Out*>(outs[lane]);
        }
        (*static_cast<const Combine*>(context))(typed_in, typed_out);
      },
      &combine);
  return out;
}

// Shared memory of the running block: a static __shared__ variable (one per
// declaration site, created by the first thread that reaches it) and the
// dynamic allocation of the launch.
void* shared_variable(const char* file, int line, size_t bytes);
void* dynamic_shared(size_t* bytes);
// Fails unless [ptr, ptr + bytes) lies in the block's shared memory.
void check_shared_range(const void* ptr, size_t bytes, const char* what);

// cp.async: the copy is issued now (its source read) and lands in shared
// memory only when a cp.async.wait_group that covers its group runs.
void cp_async(void* smem, const void* gmem, int bytes, bool valid);
void cp_async_commit();
void cp_async_wait(int pending);

}  // namespace mlx_emu
