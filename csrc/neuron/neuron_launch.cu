// Launch planning and element-type dispatch. The kernels are instantiated per element type in
// neuron_{forward,backward}_<type>.cu.
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "neuron/neuron_kernels.cuh"
#include "neuron/neuron_ops.h"

namespace spikekern {

LaunchPlan plan_neuron_forward(const NeuronForwardArgs& args, int multiprocessor_count) {
  const NeuronConfig& config = args.config;
  const int x_bytes = element_bytes(config.element_type);
  return plan_groups(kMaxNeuronGroupWidth, config.element_type, /*recompute=*/false,
                     config.num_neurons,
                     {{args.x_seq, x_bytes},
                      {args.v_init, x_bytes},
                      {args.spike_seq, x_bytes},
                      {args.v_last, x_bytes},
                      {args.state, state_element_bytes(config.state_mode, config.element_type)},
                      {args.v_seq, x_bytes}},
                     multiprocessor_count);
}

LaunchPlan plan_neuron_backward(const NeuronBackwardArgs& args, int multiprocessor_count) {
  const NeuronConfig& config = args.config;
  const int x_bytes = element_bytes(config.element_type);
  return plan_groups(kMaxNeuronGroupWidth, config.element_type,
                     config.state_mode == StateMode::kRecompute, config.num_neurons,
                     {{args.grad_spike, x_bytes},
                      {args.grad_v_last, x_bytes},
                      {args.grad_v_seq, x_bytes},
                      {args.state, state_element_bytes(config.state_mode, config.element_type)},
                      {args.v_init, x_bytes},
                      {args.grad_x, x_bytes},
                      {args.grad_v_init, x_bytes}},
                     multiprocessor_count);
}

void launch_neuron_forward(const NeuronForwardArgs& args, const LaunchPlan& plan,
                           cudaStream_t stream) {
  dispatch_element_type(args.config.element_type, [&](auto element) {
    launch_neuron_forward_typed<typename decltype(element)::type>(args, plan, stream);
  });
}

void launch_neuron_backward(const NeuronBackwardArgs& args, const LaunchPlan& plan,
                            cudaStream_t stream) {
  dispatch_element_type(args.config.element_type, [&](auto element) {
    launch_neuron_backward_typed<typename decltype(element)::type>(args, plan, stream);
  });
}

}  // namespace spikekern
