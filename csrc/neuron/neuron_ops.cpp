// CUDA implementations of spikekern_cuda::neuron_forward / neuron_backward (schemas in
// csrc/bindings.cpp): validate, allocate the outputs, launch one kernel. Semantics and argument
// meanings: docs/neuron_ops.md. Nothing here synchronises or reads device memory, so the ops can be
// captured in CUDA graphs.
#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/multistep_ops.h"
#include "neuron/neuron_ops.h"

namespace spikekern {
namespace {

using ForwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

NeuronKind check_neuron_kind(int64_t neuron_kind) {
  TORCH_CHECK(neuron_kind >= 0 && neuron_kind <= 2,
              "neuron_kind must be 0 (IF), 1 (LIF) or 2 (PLIF), got ", neuron_kind);
  return static_cast<NeuronKind>(neuron_kind);
}

// PLIF's k = sigmoid(w), read by the kernels from device memory (no host round trip).
const float* check_decay(const std::optional<at::Tensor>& decay, NeuronKind kind,
                         const at::Tensor& sequence) {
  if (kind != NeuronKind::kPLIF) {
    TORCH_CHECK(!decay.has_value(), "decay must be None unless neuron_kind is 2 (PLIF)");
    return nullptr;
  }
  TORCH_CHECK(decay.has_value(), "decay (k = sigmoid(w)) is required for PLIF");
  TORCH_CHECK(decay->device() == sequence.device(), "decay must be on ", sequence.device(),
              ", got ", decay->device());
  TORCH_CHECK(decay->scalar_type() == at::kFloat, "decay must be float32, got ",
              decay->scalar_type());
  TORCH_CHECK(decay->numel() == 1, "decay must have one element, got ", decay->numel());
  return decay->const_data_ptr<float>();
}

// The checked neuron arguments shared by forward and backward, as the kernels' config.
NeuronConfig check_config(const at::Tensor& sequence, ElementType element_type,
                          const std::optional<at::Tensor>& decay, int64_t neuron_kind, double tau,
                          bool decay_input, double v_threshold, double v_reset, bool soft_reset,
                          int64_t state_mode) {
  const NeuronKind kind = check_neuron_kind(neuron_kind);
  const float* decay_data = check_decay(decay, kind, sequence);
  const StateMode mode = check_state_mode(state_mode, "float32 H", "bfloat16 H - v_threshold");
  return {sequence.size(0),
          sequence.size(1),
          element_type,
          kind,
          decay_input,
          soft_reset,
          mode,
          static_cast<float>(tau),
          static_cast<float>(v_threshold),
          static_cast<float>(v_reset),
          decay_data};
}

ForwardOutputs neuron_forward_cuda(const at::Tensor& x_seq, const std::optional<at::Tensor>& v_init,
                                   const std::optional<at::Tensor>& decay, int64_t neuron_kind,
                                   double tau, bool decay_input, double v_threshold,
                                   double v_reset, bool soft_reset, bool store_v_seq,
                                   int64_t state_mode) {
  const ElementType element_type = check_sequence(x_seq, "x_seq");
  const int64_t num_steps = x_seq.size(0);
  const int64_t num_neurons = x_seq.size(1);
  const void* v_init_data = check_optional_tensor(v_init, "v_init", x_seq, {num_neurons});
  const NeuronConfig config = check_config(x_seq, element_type, decay, neuron_kind, tau,
                                           decay_input, v_threshold, v_reset, soft_reset,
                                           state_mode);
  const StateMode mode = config.state_mode;

  const c10::cuda::CUDAGuard device_guard(x_seq.device());
  at::Tensor spike_seq = at::empty({num_steps, num_neurons}, x_seq.options());
  at::Tensor v_last = at::empty({num_neurons}, x_seq.options());
  at::Tensor state = new_state(x_seq, mode);
  at::Tensor v_seq = store_v_seq ? at::empty({num_steps, num_neurons}, x_seq.options())
                                 : at::empty({0}, x_seq.options());
  if (num_steps == 0 || num_neurons == 0) {
    // No step taken: the last membrane is the initial one.
    if (v_init.has_value()) {
      v_last.copy_(*v_init);
    } else {
      v_last.fill_(v_reset);
    }
    return {spike_seq, v_last, state, v_seq};
  }

  NeuronForwardArgs args{};
  args.config = config;
  args.x_seq = x_seq.const_data_ptr();
  args.v_init = v_init_data;
  args.spike_seq = spike_seq.mutable_data_ptr();
  args.v_last = v_last.mutable_data_ptr();
  args.state = saves_state(mode) ? state.mutable_data_ptr() : nullptr;
  args.v_seq = store_v_seq ? v_seq.mutable_data_ptr() : nullptr;

  const LaunchPlan plan = plan_neuron_forward(args, multiprocessor_count(x_seq));
  launch_neuron_forward(args, plan, c10::cuda::getCurrentCUDAStream(x_seq.get_device()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {spike_seq, v_last, state, v_seq};
}

BackwardOutputs neuron_backward_cuda(const at::Tensor& grad_spike,
                                     const std::optional<at::Tensor>& grad_v_last,
                                     const std::optional<at::Tensor>& grad_v_seq,
                                     const at::Tensor& state,
                                     const std::optional<at::Tensor>& v_init,
                                     const std::optional<at::Tensor>& decay, int64_t neuron_kind,
                                     double tau, bool decay_input, double v_threshold,
                                     double v_reset, bool soft_reset, bool detach_reset,
                                     int64_t surrogate, double alpha, int64_t state_mode) {
  const ElementType element_type = check_sequence(grad_spike, "grad_spike");
  const int64_t num_steps = grad_spike.size(0);
  const int64_t num_neurons = grad_spike.size(1);
  const void* grad_v_last_data =
      check_optional_tensor(grad_v_last, "grad_v_last", grad_spike, {num_neurons});
  const void* grad_v_seq_data =
      check_optional_tensor(grad_v_seq, "grad_v_seq", grad_spike, {num_steps, num_neurons});
  const void* v_init_data = check_optional_tensor(v_init, "v_init", grad_spike, {num_neurons});
  const NeuronConfig config = check_config(grad_spike, element_type, decay, neuron_kind, tau,
                                           decay_input, v_threshold, v_reset, soft_reset,
                                           state_mode);
  check_backward_state(state, config.state_mode, grad_spike, "neuron_backward",
                       "save the charge (mode 1)");
  const Surrogate surrogate_id = check_surrogate(surrogate);

  const c10::cuda::CUDAGuard device_guard(grad_spike.device());
  const auto float_options = grad_spike.options().dtype(at::kFloat);
  at::Tensor grad_x = at::empty({num_steps, num_neurons}, grad_spike.options());
  if (num_steps == 0 || num_neurons == 0) {
    // No step taken: the gradient reaching v_init is the one given for v_last.
    at::Tensor grad_v_init = grad_v_last.has_value()
                                 ? grad_v_last->clone()
                                 : at::zeros({num_neurons}, grad_spike.options());
    return {grad_x, grad_v_init, at::empty({0}, float_options)};
  }
  at::Tensor grad_v_init = at::empty({num_neurons}, grad_spike.options());

  NeuronBackwardArgs args{};
  args.config = config;
  args.detach_reset = detach_reset;
  args.surrogate = surrogate_id;
  args.alpha = static_cast<float>(alpha);
  args.grad_spike = grad_spike.const_data_ptr();
  args.grad_v_last = grad_v_last_data;
  args.grad_v_seq = grad_v_seq_data;
  args.state = state.const_data_ptr();
  args.v_init = v_init_data;
  args.grad_x = grad_x.mutable_data_ptr();
  args.grad_v_init = grad_v_init.mutable_data_ptr();

  const LaunchPlan plan = plan_neuron_backward(args, multiprocessor_count(grad_spike));
  // One partial sum of P per block; the op adds them up (fixed order, so deterministic).
  const bool plif = config.kind == NeuronKind::kPLIF;
  at::Tensor plif_partials = at::empty({plif ? plan.num_blocks : int64_t{0}}, float_options);
  args.plif_partials = plif ? plif_partials.mutable_data_ptr<float>() : nullptr;

  launch_neuron_backward(args, plan, c10::cuda::getCurrentCUDAStream(grad_spike.get_device()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_x, grad_v_init, plif_partials};
}

}  // namespace
}  // namespace spikekern

TORCH_LIBRARY_IMPL(spikekern_cuda, CUDA, m) {
  m.impl("neuron_forward", TORCH_FN(spikekern::neuron_forward_cuda));
  m.impl("neuron_backward", TORCH_FN(spikekern::neuron_backward_cuda));
}
