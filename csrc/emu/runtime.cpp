// The SIMT emulator's runtime (runtime.h): fibers, the block scheduler,
// barriers, warp collectives, shared memory, cp.async and kernel launches.

#include "emu/runtime.h"

#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define MLX_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MLX_EMU_ASAN 1
#endif
#endif
#ifdef MLX_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the SIMT emulator switches fibers with x86-64 assembly; other hosts are not supported yet"
#endif

namespace mlx_emu {
struct Thread;
}

// Fiber switch (x86-64 System V): saves the callee-saved registers, MXCSR and
// the x87 control word on the current stack, stores the stack pointer in
// *save_sp, and resumes the fiber whose stack pointer is load_sp.
extern "C" void mlx_emu_switch(void** save_sp, void* load_sp) __attribute__((visibility("hidden")));
extern "C" void mlx_emu_fiber_entry() __attribute__((visibility("hidden")));
extern "C" void mlx_emu_fiber_main(mlx_emu::Thread* thread) __attribute__((visibility("hidden"), used, noreturn));
asm(R"(
  .text
  .globl mlx_emu_switch
  .hidden mlx_emu_switch
  .type mlx_emu_switch, @function
mlx_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mlx_emu_switch, .-mlx_emu_switch

  .globl mlx_emu_fiber_entry
  .hidden mlx_emu_fiber_entry
  .type mlx_emu_fiber_entry, @function
mlx_emu_fiber_entry:
  movq %r12, %rdi
  call mlx_emu_fiber_main
  ud2
  .size mlx_emu_fiber_entry, .-mlx_emu_fiber_entry
)");

namespace mlx_emu {
namespace {

// An H100's limits (the emulator checks launches against them).
constexpr int kWarpSize = 32;
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockDimZ = 64;
constexpr unsigned kMaxGridX = 2147483647u;
constexpr unsigned kMaxGridYZ = 65535;
constexpr size_t kDefaultMaxSmem = 48 * 1024;   // dynamic, without the opt-in; also the static limit
constexpr size_t kMaxSmemOptin = 227 * 1024;    // per block, static + dynamic
constexpr size_t kStackBytes = 256 * 1024;      // per fiber (a guard page below)
constexpr size_t kGuardBytes = 64;              // after every shared-memory variable
constexpr size_t kSharedAlign = 128;
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kFreshSharedByte = 0xFF;  // uninitialized shared memory reads as NaN / -1

// --- AddressSanitizer annotations of fiber switches --------------------------

inline void asan_start_switch(void** fake_stack_save, const void* bottom, size_t size) {
#ifdef MLX_EMU_ASAN
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}
inline void asan_finish_switch(void* fake_stack_save, const void** bottom_old, size_t* size_old) {
#ifdef MLX_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#else
  (void)fake_stack_save, (void)bottom_old, (void)size_old;
#endif
}
inline void asan_poison(const void* p, size_t n) {
#ifdef MLX_EMU_ASAN
  ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}
inline void asan_unpoison(const void* p, size_t n) {
#ifdef MLX_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}

// --- fiber stacks --------------------------------------------------------------

// Stacks for up to 1024 fibers, mapped lazily (only touched pages cost memory),
// each with an inaccessible guard page below it. Reused across blocks and launches.
class StackSet {
 public:
  StackSet() {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    stride_ = kStackBytes + page_;
    const size_t bytes = stride_ * kMaxThreadsPerBlock;
    base_ = static_cast<unsigned char*>(
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    TORCH_CHECK(base_ != MAP_FAILED, "mlx_emu: could not map fiber stacks");
    for (unsigned i = 0; i < kMaxThreadsPerBlock; ++i) mprotect(base_ + i * stride_, page_, PROT_NONE);
  }
  ~StackSet() { munmap(base_, stride_ * kMaxThreadsPerBlock); }
  StackSet(const StackSet&) = delete;
  StackSet& operator=(const StackSet&) = delete;
  unsigned char* bottom(int i) const { return base_ + i * stride_ + page_; }

 private:
  unsigned char* base_;
  size_t page_, stride_;
};

std::mutex g_stack_mutex;
std::vector<std::unique_ptr<StackSet>> g_free_stacks;

std::unique_ptr<StackSet> take_stacks() {
  std::lock_guard<std::mutex> lock(g_stack_mutex);
  if (g_free_stacks.empty()) return std::make_unique<StackSet>();
  auto stacks = std::move(g_free_stacks.back());
  g_free_stacks.pop_back();
  return stacks;
}
void return_stacks(std::unique_ptr<StackSet> stacks) {
  std::lock_guard<std::mutex> lock(g_stack_mutex);
  g_free_stacks.push_back(std::move(stacks));
}

}  // namespace

// --- the state of a block and its threads --------------------------------------

struct Block;

enum class State { kRunnable, kBarrier, kWarp, kDone };

struct CpAsyncCopy {
  void* dst;
  unsigned char data[16];
  int bytes;
};

struct Thread {
  ThreadCoords coords;
  int linear = 0, warp = 0, lane = 0;
  State state = State::kRunnable;
  void* sp = nullptr;  // saved stack pointer while suspended
  unsigned char* stack_bottom = nullptr;
  void* asan_fake_stack = nullptr;
  std::vector<CpAsyncCopy> open_group;             // cp.async issued since the last commit
  std::deque<std::vector<CpAsyncCopy>> committed;  // committed groups, oldest first
  Block* block = nullptr;
};

struct WarpState {
  const char* what = nullptr;  // the pending collective, or null
  unsigned mask = 0, arrived = 0;
  unsigned gone = 0;  // lanes that exited or do not exist (a partial last warp)
  const void* ins[kWarpSize] = {};
  void* outs[kWarpSize] = {};
};

struct SharedAlloc {
  const char* file;  // declaration site (null: the dynamic allocation)
  int line;
  unsigned char* data;
  size_t bytes;
};

struct Block {
  std::vector<Thread> threads;
  std::vector<WarpState> warps;
  std::vector<int> runnable;
  int live = 0, at_barrier = 0;
  const char* barrier_file = nullptr;  // where the threads at the barrier wait
  int barrier_line = 0;
  std::vector<SharedAlloc> shared;  // static __shared__ variables, in creation order
  SharedAlloc dynamic{nullptr, 0, nullptr, 0};
  size_t static_bytes = 0;
  std::mt19937_64 rng;
  std::string error;
  const std::function<void()>* body = nullptr;
  // The scheduler's side of the switches (the worker's own stack).
  void* scheduler_sp = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  size_t scheduler_stack_size = 0;
};

namespace {

thread_local Thread* tl_thread = nullptr;

Thread& current() {
  TORCH_CHECK(tl_thread != nullptr, "mlx_emu: a device primitive was called outside a kernel");
  return *tl_thread;
}

std::string describe(const Thread& t) {
  std::ostringstream out;
  const auto& c = t.coords;
  out << "block (" << c.block_idx.x << ", " << c.block_idx.y << ", " << c.block_idx.z << ") thread ("
      << c.thread_idx.x << ", " << c.thread_idx.y << ", " << c.thread_idx.z << ") [warp " << t.warp << " lane "
      << t.lane << "]";
  return out.str();
}

std::string hex_mask(unsigned mask) {
  char buffer[16];
  std::snprintf(buffer, sizeof(buffer), "0x%08x", mask);
  return buffer;
}

// Back to the scheduler; returns when this thread is resumed.
void yield_to_scheduler(Thread& t) {
  Block& b = *t.block;
  asan_start_switch(&t.asan_fake_stack, b.scheduler_stack_bottom, b.scheduler_stack_size);
  mlx_emu_switch(&t.sp, b.scheduler_sp);
  asan_finish_switch(t.asan_fake_stack, &b.scheduler_stack_bottom, &b.scheduler_stack_size);
}

// Leaves the fiber for good (its stack is abandoned, not unwound).
[[noreturn]] void leave_fiber(Thread& t) {
  Block& b = *t.block;
  asan_start_switch(nullptr, b.scheduler_stack_bottom, b.scheduler_stack_size);
  void* unused;
  mlx_emu_switch(&unused, b.scheduler_sp);
  __builtin_unreachable();
}

void make_runnable(Block& b, Thread& t) {
  t.state = State::kRunnable;
  b.runnable.push_back(t.linear);
}

void release_barrier(Block& b) {
  for (Thread& t : b.threads) {
    if (t.state == State::kBarrier) make_runnable(b, t);
  }
  b.at_barrier = 0;
}

void land_group(std::vector<CpAsyncCopy>& group) {
  for (const CpAsyncCopy& c : group) std::memcpy(c.dst, c.data, c.bytes);
}

// A thread returned from the kernel: barriers stop waiting for it (as on the
// hardware); a warp collective that names it can never complete.
void finish_thread(Thread& t) {
  Block& b = *t.block;
  t.state = State::kDone;
  --b.live;
  WarpState& w = b.warps[t.warp];
  const unsigned bit = 1u << t.lane;
  w.gone |= bit;
  if (w.what != nullptr && (w.mask & bit) && !(w.arrived & bit)) {
    device_error(std::string("exited while lanes ") + hex_mask(w.arrived) + " of its warp wait in " + w.what +
                 " with mask " + hex_mask(w.mask) + " (which includes this lane)");
  }
  if (b.at_barrier > 0 && b.at_barrier == b.live) release_barrier(b);
}

}  // namespace
}  // namespace mlx_emu

extern "C" void mlx_emu_fiber_main(mlx_emu::Thread* thread) {
  using namespace mlx_emu;
  Block& b = *thread->block;
  asan_finish_switch(nullptr, &b.scheduler_stack_bottom, &b.scheduler_stack_size);
  try {
    (*b.body)();
  } catch (const std::exception& e) {
    device_error(std::string("exception in device code: ") + e.what());
  }
  finish_thread(*thread);
  leave_fiber(*thread);
}

namespace mlx_emu {

const ThreadCoords& coords() { return current().coords; }

void device_error(const std::string& message) {
  Thread& t = current();
  Block& b = *t.block;
  if (b.error.empty()) b.error = describe(t) + ": " + message;
  leave_fiber(t);
}

void sync_threads(const char* file, int line) {
  Thread& t = current();
  Block& b = *t.block;
  if (b.at_barrier == 0) {
    b.barrier_file = file;
    b.barrier_line = line;
  } else if (line != b.barrier_line || std::strcmp(file, b.barrier_file) != 0) {
    device_error("reached __syncthreads at " + std::string(file) + ":" + std::to_string(line) + " while " +
                 std::to_string(b.at_barrier) + " threads wait at the one at " + b.barrier_file + ":" +
                 std::to_string(b.barrier_line) + " (a barrier in divergent code)");
  }
  t.state = State::kBarrier;
  if (++b.at_barrier == b.live) release_barrier(b);
  yield_to_scheduler(t);
}

unsigned active_mask() {
  Thread& t = current();
  return ~t.block->warps[t.warp].gone;
}

void warp_collective(const char* what, unsigned mask, const void* in, void* out, CombineFn combine,
                     const void* context) {
  Thread& t = current();
  Block& b = *t.block;
  WarpState& w = b.warps[t.warp];
  const unsigned bit = 1u << t.lane;
  if (!(mask & bit)) device_error(std::string(what) + " with mask " + hex_mask(mask) + " that excludes the calling lane");
  if (mask & w.gone) {
    device_error(std::string(what) + " with mask " + hex_mask(mask) + " names lanes " + hex_mask(mask & w.gone) +
                 " that have exited (or do not exist)");
  }
  if (w.what == nullptr) {
    w.what = what;
    w.mask = mask;
    w.arrived = 0;
    std::fill(std::begin(w.ins), std::end(w.ins), nullptr);
    std::fill(std::begin(w.outs), std::end(w.outs), nullptr);
  } else if (std::strcmp(w.what, what) != 0 || w.mask != mask) {
    device_error(std::string("reached ") + what + " with mask " + hex_mask(mask) + " while lanes " +
                 hex_mask(w.arrived) + " of its warp wait in " + w.what + " with mask " + hex_mask(w.mask) +
                 " (divergent warp collectives)");
  }
  w.ins[t.lane] = in;
  w.outs[t.lane] = out;
  w.arrived |= bit;
  t.state = State::kWarp;
  if (w.arrived == w.mask) {
    combine(w.ins, w.outs, context);
    w.what = nullptr;
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if (mask & (1u << lane)) make_runnable(b, b.threads[t.warp * kWarpSize + lane]);
    }
  }
  yield_to_scheduler(t);
}

// --- shared memory ------------------------------------------------------------------

namespace {

SharedAlloc allocate_shared(const char* file, int line, size_t bytes) {
  void* data = nullptr;
  TORCH_CHECK(posix_memalign(&data, kSharedAlign, bytes + kGuardBytes) == 0, "mlx_emu: out of memory");
  auto* bytes_ptr = static_cast<unsigned char*>(data);
  std::memset(bytes_ptr, kFreshSharedByte, bytes);
  std::memset(bytes_ptr + bytes, kGuardByte, kGuardBytes);
  asan_poison(bytes_ptr + bytes, kGuardBytes);
  return {file, line, bytes_ptr, bytes};
}

// False when a guard byte was overwritten (a write past the end).
bool release_shared(const SharedAlloc& a) {
  asan_unpoison(a.data + a.bytes, kGuardBytes);
  bool intact = true;
  for (size_t i = 0; i < kGuardBytes; ++i) intact &= a.data[a.bytes + i] == kGuardByte;
  std::free(a.data);
  return intact;
}

std::string site_of(const SharedAlloc& a) {
  if (a.file == nullptr) return "the dynamic shared memory (extern __shared__)";
  return std::string("the __shared__ variable declared at ") + a.file + ":" + std::to_string(a.line);
}

}  // namespace

void* shared_variable(const char* file, int line, size_t bytes) {
  Thread& t = current();
  Block& b = *t.block;
  for (const SharedAlloc& a : b.shared) {
    if (a.line == line && std::strcmp(a.file, file) == 0) {
      if (a.bytes != bytes) device_error("the __shared__ variable at " + std::string(file) + ":" + std::to_string(line) + " changed size");
      return a.data;
    }
  }
  b.static_bytes += bytes;
  if (b.static_bytes > kDefaultMaxSmem) {
    device_error("static shared memory of " + std::to_string(b.static_bytes) + " bytes exceeds the " +
                 std::to_string(kDefaultMaxSmem) + "-byte limit");
  }
  if (b.static_bytes + b.dynamic.bytes > kMaxSmemOptin) {
    device_error("static (" + std::to_string(b.static_bytes) + ") + dynamic (" + std::to_string(b.dynamic.bytes) +
                 ") shared memory exceeds an H100's " + std::to_string(kMaxSmemOptin) + " bytes per block");
  }
  b.shared.push_back(allocate_shared(file, line, bytes));
  return b.shared.back().data;
}

void* dynamic_shared(size_t* bytes) {
  Block& b = *current().block;
  if (bytes != nullptr) *bytes = b.dynamic.bytes;
  return b.dynamic.data;
}

void check_shared_range(const void* ptr, size_t bytes, const char* what) {
  Block& b = *current().block;
  const auto* p = static_cast<const unsigned char*>(ptr);
  const auto inside = [&](const SharedAlloc& a) { return p >= a.data && p + bytes <= a.data + a.bytes; };
  if (inside(b.dynamic)) return;
  for (const SharedAlloc& a : b.shared) {
    if (inside(a)) return;
  }
  std::ostringstream out;
  out << what << ": " << bytes << " bytes at " << ptr << " are not inside the block's shared memory";
  device_error(out.str());
}

// --- cp.async -------------------------------------------------------------------------

void cp_async(void* smem, const void* gmem, int bytes, bool valid) {
  Thread& t = current();
  check_shared_range(smem, bytes, "cp.async destination");
  if (reinterpret_cast<uintptr_t>(smem) % bytes != 0) device_error("cp.async: misaligned shared-memory destination");
  if (valid && reinterpret_cast<uintptr_t>(gmem) % bytes != 0) device_error("cp.async: misaligned global source");
  CpAsyncCopy copy{smem, {}, bytes};
  if (valid) std::memcpy(copy.data, gmem, bytes);  // src-size 0 (invalid) zero-fills without reading
  t.open_group.push_back(copy);
}

void cp_async_commit() {
  Thread& t = current();
  t.committed.push_back(std::move(t.open_group));
  t.open_group.clear();
}

void cp_async_wait(int pending) {
  Thread& t = current();
  while (static_cast<int>(t.committed.size()) > pending) {
    land_group(t.committed.front());
    t.committed.pop_front();
  }
}

// --- launches -------------------------------------------------------------------------

namespace {

std::mutex g_attribute_mutex;
std::map<const void*, int> g_max_dynamic_smem;

int max_dynamic_smem(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_attribute_mutex);
  const auto it = g_max_dynamic_smem.find(kernel);
  return it == g_max_dynamic_smem.end() ? static_cast<int>(kDefaultMaxSmem) : it->second;
}

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t base_seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("MLX_EMU_SEED");
    return env != nullptr ? std::strtoull(env, nullptr, 0) : uint64_t{0x5eed};
  }();
  return seed;
}

std::atomic<uint64_t> g_seed_override{0};

int worker_count(int64_t blocks) {
  static const int workers = [] {
    const char* env = std::getenv("MLX_EMU_THREADS");
    const int n = env != nullptr ? std::atoi(env) : static_cast<int>(std::thread::hardware_concurrency());
    return std::max(1, n);
  }();
  return static_cast<int>(std::min<int64_t>(workers, blocks));
}

struct LaunchShape {
  Dim3 grid, block;
  size_t dynamic_smem;
  uint64_t seed;
};

// Runs one block to completion; returns "" or what went wrong.
std::string run_block(const LaunchShape& shape, Dim3 block_idx, int64_t block_linear, StackSet& stacks,
                      const std::function<void()>& body) {
  Block b;
  const Dim3 bd = shape.block;
  const int threads = static_cast<int>(bd.x * bd.y * bd.z);
  const int warps = (threads + kWarpSize - 1) / kWarpSize;
  b.body = &body;
  b.rng.seed(mix(shape.seed ^ mix(static_cast<uint64_t>(block_linear))));
  b.threads.resize(threads);
  b.warps.resize(warps);
  b.live = threads;
  if (threads % kWarpSize != 0) b.warps.back().gone = ~0u << (threads % kWarpSize);
  b.dynamic = allocate_shared(nullptr, 0, shape.dynamic_smem);
  for (int i = 0; i < threads; ++i) {
    Thread& t = b.threads[i];
    t.block = &b;
    t.linear = i;
    t.warp = i / kWarpSize;
    t.lane = i % kWarpSize;
    t.coords.thread_idx = {static_cast<unsigned>(i % bd.x), static_cast<unsigned>(i / bd.x % bd.y),
                           static_cast<unsigned>(i / (bd.x * bd.y))};
    t.coords.block_idx = block_idx;
    t.coords.block_dim = bd;
    t.coords.grid_dim = shape.grid;
    // The initial frame mlx_emu_switch restores: MXCSR / x87 control word,
    // r15 r14 r13 r12 (= the thread) rbx rbp, then the return address.
    t.stack_bottom = stacks.bottom(i);
    asan_unpoison(t.stack_bottom, kStackBytes);  // an abandoned fiber may have left poisoned frames
    auto* top = reinterpret_cast<uint64_t*>(t.stack_bottom + kStackBytes);
    uint64_t* frame = top - 16;  // 16-byte aligned once the return address is popped
    const uint32_t control = 0x1F80u;
    std::memcpy(frame, &control, sizeof(control));
    const uint16_t x87 = 0x037F;
    std::memcpy(reinterpret_cast<unsigned char*>(frame) + 4, &x87, sizeof(x87));
    frame[1] = frame[2] = frame[3] = 0;
    frame[4] = reinterpret_cast<uint64_t>(&t);
    frame[5] = frame[6] = 0;
    frame[7] = reinterpret_cast<uint64_t>(&mlx_emu_fiber_entry);
    t.sp = frame;
    b.runnable.push_back(i);
  }

  while (!b.runnable.empty() && b.error.empty()) {
    const size_t pick = b.rng() % b.runnable.size();
    std::swap(b.runnable[pick], b.runnable.back());
    Thread& t = b.threads[b.runnable.back()];
    b.runnable.pop_back();
    tl_thread = &t;
    void* fake_stack = nullptr;
    asan_start_switch(&fake_stack, t.stack_bottom, kStackBytes);
    mlx_emu_switch(&b.scheduler_sp, t.sp);
    asan_finish_switch(fake_stack, nullptr, nullptr);
    tl_thread = nullptr;
  }

  if (b.error.empty() && b.live > 0) {
    std::ostringstream out;
    out << "block (" << block_idx.x << ", " << block_idx.y << ", " << block_idx.z << "): deadlock: " << b.at_barrier
        << " of " << b.live << " running threads wait at __syncthreads";
    for (size_t w = 0; w < b.warps.size(); ++w) {
      if (b.warps[w].what != nullptr) {
        out << "; warp " << w << " lanes " << hex_mask(b.warps[w].arrived) << " wait in " << b.warps[w].what
            << " for lanes " << hex_mask(b.warps[w].mask & ~b.warps[w].arrived);
      }
    }
    b.error = out.str();
  }
  std::string overflow;
  for (const SharedAlloc& a : b.shared) {
    if (!release_shared(a) && overflow.empty()) overflow = site_of(a);
  }
  if (!release_shared(b.dynamic) && overflow.empty()) overflow = site_of(b.dynamic);
  if (b.error.empty() && !overflow.empty()) {
    std::ostringstream out;
    out << "block (" << block_idx.x << ", " << block_idx.y << ", " << block_idx.z << "): a write past the end of "
        << overflow;
    b.error = out.str();
  }
  return b.error;
}

}  // namespace

bool set_max_dynamic_smem(const void* kernel_key, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxSmemOptin) return false;
  std::lock_guard<std::mutex> lock(g_attribute_mutex);
  g_max_dynamic_smem[kernel_key] = bytes;
  return true;
}

void set_seed(uint64_t seed) { g_seed_override = seed; }

void launch(const std::string& site, const void* kernel_key, Dim3 grid, Dim3 block, size_t dynamic_smem,
            const std::function<void()>& kernel_body) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreadsPerBlock && block.x <= kMaxThreadsPerBlock &&
                  block.y <= kMaxThreadsPerBlock && block.z <= kMaxBlockDimZ,
              "mlx_emu: ", site, ": invalid block (", block.x, ", ", block.y, ", ", block.z, "): at most ",
              kMaxThreadsPerBlock, " threads, z <= ", kMaxBlockDimZ, " (cudaErrorInvalidConfiguration)");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= kMaxGridX && grid.y <= kMaxGridYZ &&
                  grid.z <= kMaxGridYZ,
              "mlx_emu: ", site, ": invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, "): each dim >= 1, y and z <= ",
              kMaxGridYZ, " (cudaErrorInvalidConfiguration)");
  const int allowed = max_dynamic_smem(kernel_key);
  TORCH_CHECK(dynamic_smem <= static_cast<size_t>(allowed), "mlx_emu: ", site, ": ", dynamic_smem,
              " bytes of dynamic shared memory, but the kernel allows ", allowed,
              dynamic_smem <= kMaxSmemOptin ? " (raise it with cudaFuncSetAttribute first)" : " (an H100 has 227 KiB)");

  const uint64_t override_seed = g_seed_override.load();
  LaunchShape shape{grid, block, dynamic_smem,
                    mix((override_seed != 0 ? override_seed : base_seed()) ^ std::hash<std::string>{}(site))};
  const int64_t blocks = int64_t{grid.x} * grid.y * grid.z;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string first_error;
  const auto work = [&] {
    auto stacks = take_stacks();
    for (int64_t i = next++; i < blocks && !failed; i = next++) {
      const Dim3 idx{static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                     static_cast<unsigned>(i / (int64_t{grid.x} * grid.y))};
      std::string error = run_block(shape, idx, i, *stacks, kernel_body);
      if (!error.empty()) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (first_error.empty()) first_error = std::move(error);
        failed = true;
      }
    }
    return_stacks(std::move(stacks));
  };
  const int workers = worker_count(blocks);
  std::vector<std::thread> pool;
  for (int i = 1; i < workers; ++i) pool.emplace_back(work);
  work();
  for (auto& thread : pool) thread.join();
  TORCH_CHECK(first_error.empty(), "mlx_emu: ", site, ": ", first_error);
}

}  // namespace mlx_emu

namespace mlx_emu {

std::string launch_site(const char* file, int line, const char* arguments) {
  std::string name;
  int depth = 0;
  for (const char* c = arguments; *c != '\0' && !(*c == ',' && depth == 0); ++c) {
    depth += (*c == '<' || *c == '(') - (*c == '>' || *c == ')');
    name += *c;
  }
  std::string where = file;
  const size_t csrc = where.rfind("csrc/");
  if (csrc != std::string::npos) where = where.substr(csrc);
  return name + " (" + where + ":" + std::to_string(line) + ")";
}

}  // namespace mlx_emu
