// Kernel-side pieces shared by the multi-step neuron kernels (neuron/neuron_kernels.cuh,
// leaky/leaky_kernels.cuh): launch constants, group width, state element types, the compact-state
// decoding, the initial membrane, the recompute tile's shared-memory slots, and the host-side
// dispatch from state mode / element type to instantiations and the launch planning.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/dispatch.h"
#include "common/elementwise.cuh"
#include "common/multistep.h"

namespace spikekern {

constexpr int kBlockSize = 128;
// Caps registers at 64 per thread: at least 1024 resident threads per SM, enough loads in flight
// to saturate HBM. (Without a minimum, ptxas spills a few bytes in some instantiations.)
constexpr int kMinBlocksPerMultiprocessor = 8;
// Grid cap, in blocks per SM: at least 4 waves of resident blocks, so that the block scheduler
// evens out the tail, while per-block partial sums stay short. Larger problems loop.
constexpr int kMaxGridBlocksPerMultiprocessor = 64;
// Recomputing backward keeps a [T][group width][kBlockSize] float32 tile in shared memory; at most
// 4 neurons per thread keep it within the 48 KB a block gets without opting in.
constexpr int kMaxRecomputeGroupWidth = 4;
static_assert(kMaxRecomputeSteps * kMaxRecomputeGroupWidth * kBlockSize * sizeof(float) <=
              48 * 1024);

// Neurons per thread: a 16-byte pack of x's dtype (capped when recomputing), or 1 when the
// tensors' shape or alignment does not allow packs.
constexpr int group_width(int element_bytes, bool vectorized, bool recompute) {
  const int pack = kPackBytes / element_bytes;
  if (!vectorized) return 1;
  return recompute && pack > kMaxRecomputeGroupWidth ? kMaxRecomputeGroupWidth : pack;
}

// Element type of the state: forward's output, backward's input (x_seq itself when recomputing).
template <typename scalar_t, StateMode kMode>
using StateElement = std::conditional_t<
    kMode == StateMode::kBFloat16Margin, __nv_bfloat16,
    std::conditional_t<kMode == StateMode::kRecompute, scalar_t, float>>;

// Bytes of the recompute tile: [T][kVec][kBlockSize] floats, or none.
template <int kVec>
constexpr size_t recompute_shared_bytes(bool recompute, int64_t num_steps) {
  return recompute ? static_cast<size_t>(num_steps) * kVec * kBlockSize * sizeof(float) : 0;
}

// The recompute tile's slot of step t, element i of this thread's group: only its own thread
// touches a slot, so no barrier is needed.
template <int kVec>
__device__ __forceinline__ float& recompute_slot(float* tile, int64_t t, int i) {
  return tile[(t * kVec + i) * kBlockSize + threadIdx.x];
}

// One saved step decoded: the value before the reset (H, or snnTorch's mem), its margin over the
// threshold, and the spike, which must equal forward's.
struct SavedStep {
  float h;
  float margin;
  float spike;
};

// The compact state: the margin widened from bfloat16, whose sign bit is clear exactly where the
// neuron fired (rounding to bfloat16 never flips the sign; a NaN never fired). h is approximate.
__device__ __forceinline__ SavedStep decode_compact_margin(float saved, float threshold) {
  const bool spike = !signbit(saved) && !isnan(saved);
  return {saved + threshold, saved, spike ? 1.0f : 0.0f};
}

// The membrane before step 0: the given one, or `fill_value` when there is none.
template <typename scalar_t, int N>
__device__ __forceinline__ void load_initial_membrane(const scalar_t* v_init, int64_t m,
                                                      float fill_value, float (&v)[N]) {
  if (v_init != nullptr) {
    load_pack(v_init + m, v);
  } else {
    fill(v, fill_value);
  }
}

// -------------------------------------------------------------------------------------------------
// Host side.

// What forward writes: in recompute mode, like kNone, nothing.
template <typename Body>
void dispatch_forward_state_mode(StateMode mode, Body&& body) {
  switch (mode) {
    case StateMode::kNone:
    case StateMode::kRecompute:
      body(Constant<StateMode::kNone>{});
      break;
    case StateMode::kFloat32Charge:
      body(Constant<StateMode::kFloat32Charge>{});
      break;
    case StateMode::kBFloat16Margin:
      body(Constant<StateMode::kBFloat16Margin>{});
      break;
  }
}

// What backward reads (the ops reject StateMode::kNone).
template <typename Body>
void dispatch_backward_state_mode(StateMode mode, Body&& body) {
  switch (mode) {
    case StateMode::kNone:
    case StateMode::kFloat32Charge:
      body(Constant<StateMode::kFloat32Charge>{});
      break;
    case StateMode::kBFloat16Margin:
      body(Constant<StateMode::kBFloat16Margin>{});
      break;
    case StateMode::kRecompute:
      body(Constant<StateMode::kRecompute>{});
      break;
  }
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls body(TypeTag<scalar_t>{}) with the C++ type of the element type.
template <typename Body>
void dispatch_element_type(ElementType element_type, Body&& body) {
  switch (element_type) {
    case ElementType::kFloat32:
      body(TypeTag<float>{});
      break;
    case ElementType::kFloat16:
      body(TypeTag<__half>{});
      break;
    case ElementType::kBFloat16:
      body(TypeTag<__nv_bfloat16>{});
      break;
  }
}

// A tensor the kernel moves in packs of the group width: its base must be aligned to one pack.
struct PackedOperand {
  const void* pointer;  // nullptr for an absent optional tensor
  int element_bytes;
};

// Packs need M to be a multiple of the group width `width` (so every row starts on a pack
// boundary) and every packed tensor aligned; otherwise each thread handles single elements.
inline LaunchPlan plan_groups(int width, int64_t num_neurons,
                              std::initializer_list<PackedOperand> operands,
                              int multiprocessor_count) {
  const bool aligned = std::all_of(operands.begin(), operands.end(), [&](const PackedOperand& op) {
    const auto pack_bytes = static_cast<std::uintptr_t>(width * op.element_bytes);
    return reinterpret_cast<std::uintptr_t>(op.pointer) % pack_bytes == 0;
  });
  const bool vectorized = aligned && num_neurons % width == 0;
  const int64_t num_groups = vectorized ? num_neurons / width : num_neurons;
  const int64_t blocks_needed = (num_groups + kBlockSize - 1) / kBlockSize;
  const int64_t max_blocks =
      static_cast<int64_t>(multiprocessor_count) * kMaxGridBlocksPerMultiprocessor;
  return {vectorized, std::max<int64_t>(1, std::min(blocks_needed, max_blocks))};
}

}  // namespace spikekern
