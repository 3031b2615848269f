// Launch planning and element-type dispatch. The kernels are instantiated per element type in
// neuron_{forward,backward}_<type>.cu.
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "neuron/neuron_kernels.cuh"
#include "neuron/neuron_ops.h"

namespace spikekern {
namespace {

int element_bytes(ElementType type) { return type == ElementType::kFloat32 ? 4 : 2; }

int state_element_bytes(const NeuronConfig& config) {
  switch (config.state_mode) {
    case StateMode::kBFloat16Margin:
      return 2;
    case StateMode::kRecompute:  // backward's state is x_seq
      return element_bytes(config.element_type);
    default:
      return 4;
  }
}

struct Operand {
  const void* pointer;  // nullptr for an absent optional tensor
  int element_bytes;
};

// Packs need M to be a multiple of the group width (so every row starts on a pack boundary) and
// every tensor's base aligned to its pack size; otherwise each thread handles single elements.
LaunchPlan make_plan(const NeuronConfig& config, bool recompute,
                     std::initializer_list<Operand> operands, int multiprocessor_count) {
  const int width = group_width(element_bytes(config.element_type), /*vectorized=*/true, recompute);
  bool vectorized = config.num_neurons % width == 0;
  for (const Operand& operand : operands) {
    const auto address = reinterpret_cast<std::uintptr_t>(operand.pointer);
    const auto pack_bytes = static_cast<std::uintptr_t>(width * operand.element_bytes);
    vectorized = vectorized && address % pack_bytes == 0;
  }
  const int64_t num_groups = vectorized ? config.num_neurons / width : config.num_neurons;
  const int64_t blocks_needed = (num_groups + kBlockSize - 1) / kBlockSize;
  const int64_t max_blocks =
      static_cast<int64_t>(multiprocessor_count) * kMaxGridBlocksPerMultiprocessor;
  return {vectorized, std::max<int64_t>(1, std::min(blocks_needed, max_blocks))};
}

}  // namespace

LaunchPlan plan_neuron_forward(const NeuronForwardArgs& args, int multiprocessor_count) {
  const NeuronConfig& config = args.config;
  const int x_bytes = element_bytes(config.element_type);
  return make_plan(config, /*recompute=*/false,
                   {{args.x_seq, x_bytes},
                    {args.v_init, x_bytes},
                    {args.spike_seq, x_bytes},
                    {args.v_last, x_bytes},
                    {args.state, state_element_bytes(config)},
                    {args.v_seq, x_bytes}},
                   multiprocessor_count);
}

LaunchPlan plan_neuron_backward(const NeuronBackwardArgs& args, int multiprocessor_count) {
  const NeuronConfig& config = args.config;
  const int x_bytes = element_bytes(config.element_type);
  return make_plan(config, config.state_mode == StateMode::kRecompute,
                   {{args.grad_spike, x_bytes},
                    {args.grad_v_last, x_bytes},
                    {args.grad_v_seq, x_bytes},
                    {args.state, state_element_bytes(config)},
                    {args.v_init, x_bytes},
                    {args.grad_x, x_bytes},
                    {args.grad_v_init, x_bytes}},
                   multiprocessor_count);
}

void launch_neuron_forward(const NeuronForwardArgs& args, const LaunchPlan& plan,
                           cudaStream_t stream) {
  switch (args.config.element_type) {
    case ElementType::kFloat32:
      launch_neuron_forward_typed<float>(args, plan, stream);
      break;
    case ElementType::kFloat16:
      launch_neuron_forward_typed<__half>(args, plan, stream);
      break;
    case ElementType::kBFloat16:
      launch_neuron_forward_typed<__nv_bfloat16>(args, plan, stream);
      break;
  }
}

void launch_neuron_backward(const NeuronBackwardArgs& args, const LaunchPlan& plan,
                            cudaStream_t stream) {
  switch (args.config.element_type) {
    case ElementType::kFloat32:
      launch_neuron_backward_typed<float>(args, plan, stream);
      break;
    case ElementType::kFloat16:
      launch_neuron_backward_typed<__half>(args, plan, stream);
      break;
    case ElementType::kBFloat16:
      launch_neuron_backward_typed<__nv_bfloat16>(args, plan, stream);
      break;
  }
}

}  // namespace spikekern
