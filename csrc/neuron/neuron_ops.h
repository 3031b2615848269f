// Host-side interface between the torch op (neuron_ops.cpp) and the CUDA kernels (neuron_*.cu).
// Plain structs and raw pointers only, so the .cu files compile without torch headers.
// Semantics: docs/neuron_ops.md.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/multistep.h"  // ElementType, StateMode, kMaxRecomputeSteps, LaunchPlan
#include "common/surrogate.h"

namespace spikekern {

enum class NeuronKind : int { kIF = 0, kLIF = 1, kPLIF = 2 };

// Everything that defines the neuron dynamics, shared by forward and backward.
struct NeuronConfig {
  int64_t num_steps;    // T
  int64_t num_neurons;  // M
  // Of x_seq / grad_spike, and of every other [M] or [T, M] tensor except state.
  ElementType element_type;
  NeuronKind kind;
  bool decay_input;
  bool soft_reset;
  StateMode state_mode;
  float tau;
  float v_threshold;
  float v_reset;       // 0 for soft reset
  const float* decay;  // PLIF: device pointer to k = sigmoid(w); nullptr otherwise
};

struct NeuronForwardArgs {
  NeuronConfig config;
  const void* x_seq;   // [T, M]
  const void* v_init;  // [M] or nullptr (start from v_reset)
  void* spike_seq;     // [T, M]
  void* v_last;        // [M]
  void* state;         // [T, M] float32 or bfloat16; nullptr for kNone and kRecompute
  void* v_seq;         // [T, M]: V[t] after the reset of every step; nullptr when not requested
};

struct NeuronBackwardArgs {
  NeuronConfig config;
  bool detach_reset;
  Surrogate surrogate;
  float alpha;
  const void* grad_spike;   // [T, M]
  const void* grad_v_last;  // [M] or nullptr (zeros)
  const void* grad_v_seq;   // [T, M] or nullptr (v_seq not stored: zeros)
  const void* state;        // [T, M]: float32 H, bfloat16 H - v_threshold, or x_seq (kRecompute)
  const void* v_init;       // [M] or nullptr (v_reset)
  void* grad_x;             // [T, M]
  void* grad_v_init;        // [M]
  float* plif_partials;     // [LaunchPlan::num_blocks] for PLIF, nullptr otherwise
};

LaunchPlan plan_neuron_forward(const NeuronForwardArgs& args, int multiprocessor_count);
LaunchPlan plan_neuron_backward(const NeuronBackwardArgs& args, int multiprocessor_count);

// Enqueue one kernel on `stream`, without synchronising; needs T >= 1 and M >= 1. The caller checks
// the launch error.
void launch_neuron_forward(const NeuronForwardArgs& args, const LaunchPlan& plan,
                           cudaStream_t stream);
void launch_neuron_backward(const NeuronBackwardArgs& args, const LaunchPlan& plan,
                            cudaStream_t stream);

}  // namespace spikekern
