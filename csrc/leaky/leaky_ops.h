// Host-side interface between the torch op (leaky_ops.cpp) and the CUDA kernels (leaky_*.cu).
// Plain structs and raw pointers only, so the .cu files compile without torch headers.
// Semantics: docs/leaky_op.md.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/surrogate.h"
#include "common/multistep.h"  // ElementType, StateMode, kMaxRecomputeSteps, LaunchPlan

namespace spikekern {

// snnTorch's SpikingNeuron.reset_dict ids.
enum class ResetMechanism : int { kSubtract = 0, kZero = 1, kNone = 2 };

// Everything that defines the dynamics, shared by forward and backward. In the state modes
// (StateMode), kFloat32Charge saves the membrane mem[t] and kBFloat16Margin
// saves mem[t] - threshold with its sign bit set exactly where the neuron did not fire.
struct LeakyConfig {
  int64_t num_steps;    // T
  int64_t num_neurons;  // M
  // Of x_seq / grad_spike, and of every other [M] or [T, M] tensor except state, beta and the
  // partial sums (float32).
  ElementType element_type;
  ResetMechanism reset;
  StateMode state_mode;
  bool per_neuron_beta;    // beta holds M values, else one
  bool output_mem_seq;     // the membrane output (and its gradient) is [T, M], else [M] (last step)
  const float* beta;       // device pointer; unclamped (the kernels clamp it to [0, 1])
  const float* threshold;  // device pointer to one value
};

struct LeakyForwardArgs {
  LeakyConfig config;
  const void* x_seq;     // [T, M]
  const void* mem_init;  // [M] or nullptr (start from zeros)
  void* spike_seq;       // [T, M]
  void* mem_out;         // [T, M] or [M], see output_mem_seq
  void* state;           // [T, M] float32 or bfloat16; nullptr for kNone and kRecompute
};

struct LeakyBackwardArgs {
  LeakyConfig config;
  Surrogate surrogate;
  float alpha;
  const void* grad_spike;  // [T, M]
  const void* grad_mem;    // shaped like forward's mem_out, or nullptr (zeros)
  const void* state;       // [T, M]: float32 mem, bfloat16 compact margin, or x_seq (kRecompute)
  const void* mem_init;    // [M] or nullptr (zeros)
  void* grad_x;            // [T, M]
  void* grad_mem_init;     // [M]
  // d loss / d clamped beta: one sum per neuron ([M], per-neuron beta) or per block
  // ([LaunchPlan::num_blocks], shared beta); nullptr when beta needs no gradient.
  float* decay_partials;
  float* threshold_partials;  // [LaunchPlan::num_blocks], or nullptr when not needed
};

// Grid shape from the problem size, the pointers' alignment and the device. Per-block partial sums
// hold LaunchPlan::num_blocks floats, so the caller allocates them after planning; per-neuron
// decay_partials must be set before planning (their alignment decides the group width).
LaunchPlan plan_leaky_forward(const LeakyForwardArgs& args, int multiprocessor_count);
LaunchPlan plan_leaky_backward(const LeakyBackwardArgs& args, int multiprocessor_count);

// Enqueue one kernel on `stream`, without synchronising; needs T >= 1 and M >= 1. The caller checks
// the launch error.
void launch_leaky_forward(const LeakyForwardArgs& args, const LaunchPlan& plan,
                          cudaStream_t stream);
void launch_leaky_backward(const LeakyBackwardArgs& args, const LaunchPlan& plan,
                           cudaStream_t stream);

}  // namespace spikekern
