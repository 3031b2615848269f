// Plain types shared by the host interfaces of the multi-step neuron ops (neuron/neuron_ops.h,
// leaky/leaky_ops.h): element type, state mode and launch plan. No torch headers.
#pragma once

#include <cstdint>

namespace spikekern {

// What forward saves for backward, per element and step. The neuron ops save their charge H[t],
// the leaky op its membrane mem[t] (see each op's header for the exact meaning).
enum class StateMode : int {
  kNone = 0,            // nothing (no gradient needed)
  kFloat32Charge = 1,   // H[t] (or mem[t]) in float32
  kBFloat16Margin = 2,  // H[t] - v_threshold (or mem[t] - threshold) in bfloat16
  kRecompute = 3,       // nothing: backward gets x_seq as its state and re-runs the forward
};
// Recomputing backward keeps the charges of all steps on chip (shared memory), which bounds T.
constexpr int64_t kMaxRecomputeSteps = 16;

enum class ElementType : int { kFloat32, kFloat16, kBFloat16 };

constexpr int element_bytes(ElementType type) { return type == ElementType::kFloat32 ? 4 : 2; }

// Bytes of one state element: forward's output, or backward's input (x_seq when recomputing).
constexpr int state_element_bytes(StateMode mode, ElementType element_type) {
  return mode == StateMode::kBFloat16Margin ? 2
         : mode == StateMode::kRecompute    ? element_bytes(element_type)
                                            : 4;
}

// Grid shape chosen from the problem size, the pointers' alignment and the device; per-block
// partial sums hold one float per block, so the caller allocates them from num_blocks.
struct LaunchPlan {
  bool vectorized;  // packs of neurons per thread (see group_width) instead of single elements
  int64_t num_blocks;
};

}  // namespace spikekern
