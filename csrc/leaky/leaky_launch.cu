// Launch planning and element-type dispatch. The kernels are instantiated per element type in
// leaky_{forward,backward}_<type>.cu.
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "leaky/leaky_kernels.cuh"
#include "leaky/leaky_ops.h"

namespace spikekern {
namespace {

// A per-neuron beta is read in packs of float32; a shared one is a single scalar.
PackedOperand beta_operand(const LeakyConfig& config) {
  return {config.per_neuron_beta ? config.beta : nullptr, 4};
}

}  // namespace

LaunchPlan plan_leaky_forward(const LeakyForwardArgs& args, int multiprocessor_count) {
  const LeakyConfig& config = args.config;
  const int x_bytes = element_bytes(config.element_type);
  const int state_bytes = state_element_bytes(config.state_mode, config.element_type);
  return plan_groups(kMaxLeakyGroupWidth, config.element_type, /*recompute=*/false,
                     config.num_neurons,
                     {{args.x_seq, x_bytes},
                      {args.mem_init, x_bytes},
                      {args.spike_seq, x_bytes},
                      {args.mem_out, x_bytes},
                      {args.state, state_bytes},
                      beta_operand(config)},
                     multiprocessor_count);
}

LaunchPlan plan_leaky_backward(const LeakyBackwardArgs& args, int multiprocessor_count) {
  const LeakyConfig& config = args.config;
  const int x_bytes = element_bytes(config.element_type);
  const int state_bytes = state_element_bytes(config.state_mode, config.element_type);
  return plan_groups(kMaxLeakyGroupWidth, config.element_type,
                     config.state_mode == StateMode::kRecompute, config.num_neurons,
                     {{args.grad_spike, x_bytes},
                      {args.grad_mem, x_bytes},
                      {args.state, state_bytes},
                      {args.mem_init, x_bytes},
                      {args.grad_x, x_bytes},
                      {args.grad_mem_init, x_bytes},
                      beta_operand(config),
                      {config.per_neuron_beta ? args.decay_partials : nullptr, 4}},
                     multiprocessor_count);
}

void launch_leaky_forward(const LeakyForwardArgs& args, const LaunchPlan& plan,
                          cudaStream_t stream) {
  dispatch_element_type(args.config.element_type, [&](auto element) {
    launch_leaky_forward_typed<typename decltype(element)::type>(args, plan, stream);
  });
}

void launch_leaky_backward(const LeakyBackwardArgs& args, const LaunchPlan& plan,
                           cudaStream_t stream) {
  dispatch_element_type(args.config.element_type, [&](auto element) {
    launch_leaky_backward_typed<typename decltype(element)::type>(args, plan, stream);
  });
}

}  // namespace spikekern
