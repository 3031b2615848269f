// Block-wide reductions.
#pragma once

namespace spikekern {

// Deterministic: a fixed shuffle tree per warp, then warp 0 sums the warp totals, so the same
// inputs give the same bits on every run. Every thread of the block must call it (it has a
// barrier), with blockDim.x == kBlockSize. The result is valid in thread 0 only.
template <int kBlockSize>
__device__ __forceinline__ float block_sum(float value) {
  constexpr int kWarpSize = 32;
  constexpr int kWarps = kBlockSize / kWarpSize;
  static_assert(kBlockSize % kWarpSize == 0 && kWarps <= kWarpSize,
                "block_sum needs whole warps, at most 32 of them");
  __shared__ float warp_totals[kWarps];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  if (lane == 0) warp_totals[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kWarps ? warp_totals[lane] : 0.0f;
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
  }
  return value;
}

}  // namespace spikekern
