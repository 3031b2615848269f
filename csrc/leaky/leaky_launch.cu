// Launch planning and element-type dispatch. The kernels are instantiated per element type in
// leaky_{forward,backward}_<type>.cu.
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "leaky/leaky_kernels.cuh"
#include "leaky/leaky_ops.h"

namespace spikekern {
namespace {

int x_element_bytes(const LeakyConfig& config) {
  return config.element_type == ElementType::kFloat32 ? 4 : 2;
}

// A tensor the kernel moves in packs of the group width: its base must be aligned to one pack.
struct PackedOperand {
  const void* pointer;  // nullptr for an absent optional tensor
  int element_bytes;
};

// Packs need M to be a multiple of the group width (so that every row starts on a pack boundary)
// and every packed tensor aligned; otherwise each thread handles single elements.
LaunchPlan plan_groups(const LeakyConfig& config, std::initializer_list<PackedOperand> operands,
                       int multiprocessor_count) {
  const int width = leaky_group_width(x_element_bytes(config), /*vectorized=*/true);
  const bool aligned = std::all_of(operands.begin(), operands.end(), [&](const PackedOperand& op) {
    const auto pack_bytes = static_cast<std::uintptr_t>(width * op.element_bytes);
    return reinterpret_cast<std::uintptr_t>(op.pointer) % pack_bytes == 0;
  });
  const bool vectorized = aligned && config.num_neurons % width == 0;
  const int64_t num_groups = vectorized ? config.num_neurons / width : config.num_neurons;
  const int64_t blocks_needed = (num_groups + kBlockSize - 1) / kBlockSize;
  const int64_t max_blocks =
      static_cast<int64_t>(multiprocessor_count) * kMaxGridBlocksPerMultiprocessor;
  return {vectorized, std::max<int64_t>(1, std::min(blocks_needed, max_blocks))};
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

// A per-neuron beta is read in packs of float32; a shared one is a single scalar.
PackedOperand beta_operand(const LeakyConfig& config) {
  return {config.per_neuron_beta ? config.beta : nullptr, 4};
}

}  // namespace

LaunchPlan plan_leaky_forward(const LeakyForwardArgs& args, int multiprocessor_count) {
  const LeakyConfig& config = args.config;
  const int x_bytes = x_element_bytes(config);
  const int state_bytes = config.state_mode == StateMode::kBFloat16Margin ? 2 : 4;
  return plan_groups(config,
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
  const int x_bytes = x_element_bytes(config);
  const int state_bytes = config.state_mode == StateMode::kRecompute        ? x_bytes
                          : config.state_mode == StateMode::kBFloat16Margin ? 2
                                                                            : 4;
  return plan_groups(config,
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
