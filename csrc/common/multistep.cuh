// Kernel-side pieces shared by the multi-step neuron ops (neuron/neuron_kernels.cuh,
// leaky/leaky_kernels.cuh): launch constants, group width, state element types, the saved state's
// coding (store_state, decode_saved_step), the initial membrane, the recompute tile, the forward
// kernel itself (multistep_forward_kernel, parameterised by each op's policy), and the host-side
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

// Neurons per thread: a 16-byte pack of x's dtype, capped at the op's `max_width` and at
// kMaxRecomputeGroupWidth when recomputing, or 1 when the tensors' shape or alignment does not allow
// packs. An op without a cap of its own passes kPackBytes (a pack of 1-byte elements).
constexpr int group_width(int element_bytes, bool vectorized, bool recompute, int max_width) {
  const int pack = kPackBytes / element_bytes;
  const int cap = recompute && max_width > kMaxRecomputeGroupWidth ? kMaxRecomputeGroupWidth
                                                                    : max_width;
  if (!vectorized) return 1;
  return pack > cap ? cap : pack;
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

// One saved step decoded: `saved` is the compact margin (widened from bfloat16) in kBFloat16Margin
// mode, h otherwise (the value before the reset: the neuron ops' charge H[t], snnTorch's mem[t],
// which it resets a step later). kFires is the op's spike rule on the margin.
template <StateMode kStateMode, float (*kFires)(float)>
__device__ __forceinline__ SavedStep decode_saved_step(float saved, float threshold) {
  if constexpr (kStateMode == StateMode::kBFloat16Margin) {
    return decode_compact_margin(saved, threshold);
  } else {
    const float margin = __fsub_rn(saved, threshold);
    return {saved, margin, kFires(margin)};
  }
}

// What forward saves of one step (see StateMode): h, the value before the reset, or its margin in
// the compact coding.
template <StateMode kStateMode, int N, typename state_t>
__device__ __forceinline__ void store_state(state_t* state, const float (&h)[N],
                                            const float (&compact)[N]) {
  if constexpr (kStateMode == StateMode::kFloat32Charge) store_pack(state, h);
  if constexpr (kStateMode == StateMode::kBFloat16Margin) store_pack(state, compact);
}

// -------------------------------------------------------------------------------------------------
// The forward kernel of both ops, parameterised by the op's policy type. One thread owns a group of
// kVec consecutive neurons m .. m + kVec - 1, whose elements of step t start at t * M + m, and
// walks all T steps with the membrane in registers, so every [T, M] tensor is read or written once,
// in coalesced rows. Each thread loads the next step's input before computing the current one, so
// that two loads per thread are in flight.
//
// The policy Op holds the op's dynamics and its own tensors. The kernel constructs it from the
// config and the op's other pointers (`tensors`, in the order of the op's kernel arguments; they
// are kernel parameters so that they keep __restrict__, which lets nvcc use read-only loads).
// Op supplies:
//   Config and kStateMode (never kRecompute: forward then saves nothing, like kNone);
//   Registers<kVec>, the group's values kept across steps (its membrane, ...);
//   begin_forward(m, registers): loads them;
//   step(registers, offset, x): one step, storing its outputs (the state through store_state);
//   end_forward(registers, m): the group's last stores.
//
// The backward kernels stay in each op's header: their per-step gradients differ in every line,
// and moving their walk here behind per-step hooks changed the instructions nvcc emits for 4-wide
// groups (these kernels are checked by comparing their PTX, as they cannot be run here).

template <typename Op, int kVec, typename scalar_t, typename... Tensors>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerMultiprocessor)
    multistep_forward_kernel(const typename Op::Config config, const scalar_t* __restrict__ x_seq,
                             Tensors* __restrict__... tensors) {
  static_assert(Op::kStateMode != StateMode::kRecompute, "recompute mode saves nothing: use kNone");
  const Op op(config, tensors...);
  const int64_t num_steps = config.num_steps;
  const int64_t num_neurons = config.num_neurons;
  const int64_t num_groups = num_neurons / kVec;

  for (int64_t group = first_item(); group < num_groups; group += item_stride()) {
    const int64_t m = group * kVec;
    typename Op::template Registers<kVec> registers;
    op.begin_forward(m, registers);
    float x_next[kVec];
    load_pack(x_seq + m, x_next);

    for (int64_t t = 0; t < num_steps; ++t) {
      const int64_t offset = t * num_neurons + m;
      float x[kVec];
      copy(x, x_next);
      if (t + 1 < num_steps) load_pack(x_seq + offset + num_neurons, x_next);
      op.step(registers, offset, x);
    }
    op.end_forward(registers, m);
  }
}

// -------------------------------------------------------------------------------------------------
// Host side.

// The state mode a kernel is instantiated for: forward in recompute mode saves nothing, like kNone;
// backward never runs with kNone (the ops reject it), which maps to a float32 state so that every
// mode names a kernel.
constexpr StateMode kernel_state_mode(StateMode mode, bool backward) {
  if (backward) return mode == StateMode::kNone ? StateMode::kFloat32Charge : mode;
  return mode == StateMode::kRecompute ? StateMode::kNone : mode;
}

// Calls launch(state_mode, vec, grid, shared_bytes) with the kernel's state mode and group width
// (Constant<StateMode> and Constant<int>) for the element type scalar_t, in forward or backward
// (kBackward); kMaxGroupWidth is the op's cap for group_width.
template <bool kBackward, int kMaxGroupWidth, typename scalar_t, typename Launch>
void dispatch_kernel_shape(StateMode mode, const LaunchPlan& plan, int64_t num_steps,
                           Launch&& launch) {
  const dim3 grid(static_cast<unsigned int>(plan.num_blocks));
  const auto with_state_mode = [&](auto state_mode) {
    dispatch_bool(plan.vectorized, [&](auto vectorized) {
      constexpr bool kRecompute = decltype(state_mode)::value == StateMode::kRecompute;
      constexpr int kVec =
          group_width(sizeof(scalar_t), decltype(vectorized)::value, kRecompute, kMaxGroupWidth);
      launch(state_mode, Constant<kVec>{}, grid,
             recompute_shared_bytes<kVec>(kRecompute, num_steps));
    });
  };
  switch (kernel_state_mode(mode, kBackward)) {
    case StateMode::kNone:
      if constexpr (!kBackward) with_state_mode(Constant<StateMode::kNone>{});
      break;
    case StateMode::kFloat32Charge:
      with_state_mode(Constant<StateMode::kFloat32Charge>{});
      break;
    case StateMode::kBFloat16Margin:
      with_state_mode(Constant<StateMode::kBFloat16Margin>{});
      break;
    case StateMode::kRecompute:
      if constexpr (kBackward) with_state_mode(Constant<StateMode::kRecompute>{});
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

// Plans the grid of an op whose kernels cap the group width at `max_width` (see group_width). Packs
// need M to be a multiple of the width (so every row starts on a pack boundary) and every packed
// tensor aligned; otherwise each thread handles single elements.
inline LaunchPlan plan_groups(int max_width, ElementType element_type, bool recompute,
                              int64_t num_neurons, std::initializer_list<PackedOperand> operands,
                              int multiprocessor_count) {
  const int width =
      group_width(element_bytes(element_type), /*vectorized=*/true, recompute, max_width);
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
