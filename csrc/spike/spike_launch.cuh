// Launch helpers and warp constants shared by the spike kernels (spike_kernels.cu,
// spike_conv2d_kernels.cu): grid sizing of the grid-stride kernels and the invalid-spike flag.
#pragma once

#include <algorithm>
#include <cstdint>

#include <cuda_runtime.h>

namespace spikekern {

constexpr int kWarpSize = 32;
constexpr unsigned kFullWarpMask = 0xffffffffu;
// Grid-stride kernels (the packs, unpack) launch at most this many blocks per SM; larger problems
// loop.
constexpr int kMaxBlocksPerMultiprocessor = 32;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline unsigned grid_stride_blocks(int64_t threads_needed, int block_size,
                                   int multiprocessor_count) {
  const int64_t cap = static_cast<int64_t>(multiprocessor_count) * kMaxBlocksPerMultiprocessor;
  const int64_t blocks = std::min(ceil_div(threads_needed, block_size), cap);
  return static_cast<unsigned>(std::max<int64_t>(1, blocks));
}

// One atomic per warp in which some lane saw a non-binary spike; the flag starts at 0 and is only
// ever set. Every lane of the warp must call it (a warp vote).
__device__ __forceinline__ void flag_invalid_spikes(bool invalid, int32_t* flag) {
  if (__any_sync(kFullWarpMask, invalid) && threadIdx.x % kWarpSize == 0 && flag != nullptr) {
    atomicOr(flag, 1);
  }
}

}  // namespace spikekern
