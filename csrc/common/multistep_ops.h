// Host-side checks shared by the torch ops of the multi-step neurons (neuron/neuron_ops.cpp,
// leaky/leaky_ops.cpp). Included by .cpp files only: it needs the torch headers.
#pragma once

#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>

#include "common/multistep.h"
#include "common/surrogate.h"

namespace spikekern {

// The [T, M] sequence (x_seq or grad_spike) that fixes device, dtype and shape for every other
// tensor; returns its element type.
inline ElementType check_sequence(const at::Tensor& sequence, const char* name) {
  TORCH_CHECK(sequence.is_cuda(), name, " must be a CUDA tensor, got device ", sequence.device());
  TORCH_CHECK(sequence.dim() == 2, name, " must have shape [T, M], got ", sequence.sizes());
  TORCH_CHECK(sequence.is_contiguous(), name, " must be contiguous");
  const at::ScalarType dtype = sequence.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", dtype);
  return dtype == at::kFloat  ? ElementType::kFloat32
         : dtype == at::kHalf ? ElementType::kFloat16
                              : ElementType::kBFloat16;
}

// A contiguous tensor on the sequence's device with the given dtype and sizes.
inline void check_tensor(const at::Tensor& tensor, const char* name, const at::Tensor& sequence,
                         at::ScalarType dtype, at::IntArrayRef sizes) {
  TORCH_CHECK(tensor.device() == sequence.device(), name, " must be on ", sequence.device(),
              ", got ", tensor.device());
  TORCH_CHECK(tensor.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ",
              tensor.scalar_type());
  TORCH_CHECK(tensor.sizes() == sizes, name, " must have shape ", sizes, ", got ", tensor.sizes());
  TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
}

// An optional tensor of the sequence's dtype; its data, or nullptr when absent.
inline const void* check_optional_tensor(const std::optional<at::Tensor>& tensor, const char* name,
                                         const at::Tensor& sequence, at::IntArrayRef sizes) {
  if (!tensor.has_value()) return nullptr;
  check_tensor(*tensor, name, sequence, sequence.scalar_type(), sizes);
  return tensor->const_data_ptr();
}

// saved_float32 / saved_bfloat16 name what modes 1 and 2 save, for the error message.
inline StateMode check_state_mode(int64_t state_mode, const char* saved_float32,
                                  const char* saved_bfloat16) {
  TORCH_CHECK(state_mode >= 0 && state_mode <= 3, "state_mode must be 0 (none), 1 (",
              saved_float32, "), 2 (", saved_bfloat16, ") or 3 (recompute from x_seq), got ",
              state_mode);
  return static_cast<StateMode>(state_mode);
}

// Modes 1 and 2 save a [T, M] state; 0 and 3 save nothing.
inline bool saves_state(StateMode mode) {
  return mode == StateMode::kFloat32Charge || mode == StateMode::kBFloat16Margin;
}

inline at::ScalarType state_dtype(StateMode mode) {
  return mode == StateMode::kBFloat16Margin ? at::kBFloat16 : at::kFloat;
}

// Forward's state output: [T, M] in modes 1 and 2, empty otherwise.
inline at::Tensor new_state(const at::Tensor& sequence, StateMode mode) {
  return saves_state(mode)
             ? at::empty(sequence.sizes(), sequence.options().dtype(state_dtype(mode)))
             : at::empty({0}, sequence.options().dtype(at::kFloat));
}

// Backward's state: forward's output, or x_seq itself in recompute mode (which bounds T).
// `recompute_alternative` names the mode to use for longer sequences, for the error message.
inline void check_backward_state(const at::Tensor& state, StateMode mode,
                                 const at::Tensor& grad_spike, const char* op_name,
                                 const char* recompute_alternative) {
  TORCH_CHECK(mode != StateMode::kNone, op_name,
              " needs the state saved by forward: state_mode must be 1, 2 or 3");
  const int64_t num_steps = grad_spike.size(0);
  if (mode == StateMode::kRecompute) {
    check_tensor(state, "state (x_seq in state_mode 3)", grad_spike, grad_spike.scalar_type(),
                 grad_spike.sizes());
    TORCH_CHECK(num_steps <= kMaxRecomputeSteps, "state_mode 3 (recompute) supports at most ",
                kMaxRecomputeSteps, " steps, got T = ", num_steps, "; ", recompute_alternative);
  } else {
    check_tensor(state, "state", grad_spike, state_dtype(mode), grad_spike.sizes());
  }
}

inline Surrogate check_surrogate(int64_t surrogate) {
  TORCH_CHECK(surrogate >= 0 && surrogate < kNumSurrogates, "surrogate must be an id in [0, ",
              kNumSurrogates, "), got ", surrogate);
  return static_cast<Surrogate>(surrogate);
}

inline int multiprocessor_count(const at::Tensor& on_device) {
  int count = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, on_device.get_device()));
  return count;
}

}  // namespace spikekern
