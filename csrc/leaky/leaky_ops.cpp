// CUDA implementations of spikekern_cuda::leaky_forward / leaky_backward (schemas in
// leaky_bindings.cpp): validate, allocate the outputs, launch one kernel. Semantics and argument
// meanings: docs/leaky_op.md. Nothing here synchronises or reads device memory (beta and the
// threshold stay on the device), so the ops can be captured in CUDA graphs.
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/multistep_ops.h"
#include "leaky/leaky_ops.h"

namespace spikekern {
namespace {

// The membrane output (and its gradient): every step's [T, M], or the last step's [M].
std::vector<int64_t> mem_sizes(const at::Tensor& sequence, bool output_mem_seq) {
  if (output_mem_seq) return {sequence.size(0), sequence.size(1)};
  return {sequence.size(1)};
}

ResetMechanism check_reset(int64_t reset_mechanism) {
  TORCH_CHECK(reset_mechanism >= 0 && reset_mechanism <= 2,
              "reset_mechanism must be 0 (subtract), 1 (zero) or 2 (none), got ", reset_mechanism);
  return static_cast<ResetMechanism>(reset_mechanism);
}

// beta (one float32 value or M of them) and the threshold (one float32 value) stay on the device:
// the kernels read them, so no host round trip is needed.
LeakyConfig make_config(const at::Tensor& sequence, ElementType element_type,
                        const at::Tensor& beta, const at::Tensor& threshold,
                        int64_t reset_mechanism, StateMode mode, bool output_mem_seq) {
  const int64_t num_neurons = sequence.size(1);
  const bool per_neuron_beta = beta.numel() != 1;
  check_tensor(beta, "beta", sequence, at::kFloat, {per_neuron_beta ? num_neurons : 1});
  check_tensor(threshold, "threshold", sequence, at::kFloat, {1});
  return {sequence.size(0),
          num_neurons,
          element_type,
          check_reset(reset_mechanism),
          mode,
          per_neuron_beta,
          output_mem_seq,
          beta.const_data_ptr<float>(),
          threshold.const_data_ptr<float>()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> leaky_forward_cuda(
    const at::Tensor& x_seq, const std::optional<at::Tensor>& mem_init, const at::Tensor& beta,
    const at::Tensor& threshold, int64_t reset_mechanism, bool output_mem_seq,
    int64_t state_mode) {
  const ElementType element_type = check_sequence(x_seq, "x_seq");
  const int64_t num_steps = x_seq.size(0);
  const int64_t num_neurons = x_seq.size(1);
  const StateMode mode = check_state_mode(state_mode, "float32 mem", "bfloat16 compact margin");
  LeakyForwardArgs args{};
  args.config =
      make_config(x_seq, element_type, beta, threshold, reset_mechanism, mode, output_mem_seq);
  args.mem_init = check_optional_tensor(mem_init, "mem_init", x_seq, {num_neurons});

  const c10::cuda::CUDAGuard device_guard(x_seq.device());
  at::Tensor spike_seq = at::empty({num_steps, num_neurons}, x_seq.options());
  at::Tensor mem_out = at::empty(mem_sizes(x_seq, output_mem_seq), x_seq.options());
  at::Tensor state = new_state(x_seq, mode);
  if (num_steps == 0 || num_neurons == 0) {
    // No step taken: the last membrane is the initial one (zeros without mem_init).
    if (!output_mem_seq) {
      if (mem_init.has_value()) {
        mem_out.copy_(*mem_init);
      } else {
        mem_out.zero_();
      }
    }
    return {spike_seq, mem_out, state};
  }

  args.x_seq = x_seq.const_data_ptr();
  args.spike_seq = spike_seq.mutable_data_ptr();
  args.mem_out = mem_out.mutable_data_ptr();
  args.state = saves_state(mode) ? state.mutable_data_ptr() : nullptr;
  const LaunchPlan plan = plan_leaky_forward(args, multiprocessor_count(x_seq));
  launch_leaky_forward(args, plan, c10::cuda::getCurrentCUDAStream(x_seq.get_device()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {spike_seq, mem_out, state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> leaky_backward_cuda(
    const at::Tensor& grad_spike, const std::optional<at::Tensor>& grad_mem,
    const at::Tensor& state, const std::optional<at::Tensor>& mem_init, const at::Tensor& beta,
    const at::Tensor& threshold, int64_t reset_mechanism, int64_t surrogate, double alpha,
    bool output_mem_seq, int64_t state_mode, bool beta_grad, bool threshold_grad) {
  const ElementType element_type = check_sequence(grad_spike, "grad_spike");
  const int64_t num_steps = grad_spike.size(0);
  const int64_t num_neurons = grad_spike.size(1);
  const StateMode mode = check_state_mode(state_mode, "float32 mem", "bfloat16 compact margin");
  check_backward_state(state, mode, grad_spike, "leaky_backward", "save the membrane (mode 1)");
  const Surrogate surrogate_id = check_surrogate(surrogate);
  LeakyBackwardArgs args{};
  args.config =
      make_config(grad_spike, element_type, beta, threshold, reset_mechanism, mode, output_mem_seq);
  args.surrogate = surrogate_id;
  args.alpha = static_cast<float>(alpha);
  args.grad_mem = check_optional_tensor(grad_mem, "grad_mem", grad_spike,
                                        mem_sizes(grad_spike, output_mem_seq));
  args.mem_init = check_optional_tensor(mem_init, "mem_init", grad_spike, {num_neurons});

  const c10::cuda::CUDAGuard device_guard(grad_spike.device());
  const auto float_options = grad_spike.options().dtype(at::kFloat);
  const bool per_neuron_beta = args.config.per_neuron_beta;
  at::Tensor grad_x = at::empty({num_steps, num_neurons}, grad_spike.options());
  if (num_steps == 0 || num_neurons == 0) {
    // No step taken: the gradient reaching mem_init is the one given for the last membrane, and
    // beta and the threshold had no effect.
    at::Tensor grad_mem_init = grad_mem.has_value() && !output_mem_seq
                                   ? grad_mem->clone()
                                   : at::zeros({num_neurons}, grad_spike.options());
    const int64_t decay_size = per_neuron_beta ? num_neurons : 1;
    return {grad_x, grad_mem_init, at::zeros({beta_grad ? decay_size : 0}, float_options),
            at::zeros({threshold_grad ? 1 : 0}, float_options)};
  }
  at::Tensor grad_mem_init = at::empty({num_neurons}, grad_spike.options());
  // Per-neuron sums exist before planning (their alignment decides the group width).
  at::Tensor decay_partials =
      at::empty({beta_grad && per_neuron_beta ? num_neurons : 0}, float_options);

  args.grad_spike = grad_spike.const_data_ptr();
  args.state = state.const_data_ptr();
  args.grad_x = grad_x.mutable_data_ptr();
  args.grad_mem_init = grad_mem_init.mutable_data_ptr();
  args.decay_partials = beta_grad && per_neuron_beta ? decay_partials.mutable_data_ptr<float>()
                                                     : nullptr;
  const LaunchPlan plan = plan_leaky_backward(args, multiprocessor_count(grad_spike));
  // Per-block partial sums, which the op adds up (in a fixed order, so deterministically).
  if (beta_grad && !per_neuron_beta) {
    decay_partials = at::empty({plan.num_blocks}, float_options);
    args.decay_partials = decay_partials.mutable_data_ptr<float>();
  }
  at::Tensor threshold_partials = at::empty({threshold_grad ? plan.num_blocks : 0}, float_options);
  args.threshold_partials = threshold_grad ? threshold_partials.mutable_data_ptr<float>() : nullptr;

  launch_leaky_backward(args, plan, c10::cuda::getCurrentCUDAStream(grad_spike.get_device()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_x, grad_mem_init, decay_partials, threshold_partials};
}

}  // namespace
}  // namespace spikekern

TORCH_LIBRARY_IMPL(spikekern_cuda, CUDA, m) {
  m.impl("leaky_forward", TORCH_FN(spikekern::leaky_forward_cuda));
  m.impl("leaky_backward", TORCH_FN(spikekern::leaky_backward_cuda));
}
