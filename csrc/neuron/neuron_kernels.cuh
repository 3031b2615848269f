// Fused multi-step neuron kernels. Math, saved state and contract: docs/neuron_ops.md.
//
// One thread owns a group of neurons (one element, or a pack of up to 16 bytes of x's dtype when
// the tensors allow it) and walks all T steps with the membrane in registers, so every tensor is
// read or written exactly once. Consecutive threads own consecutive groups, so each step's accesses
// are coalesced rows of [T, M]. The forward kernel is common/multistep.cuh's
// multistep_forward_kernel with the NeuronForward policy below; the backward kernel is here.
//
// Compile-time switches: element type, neuron kind and decay_input, reset kind, detach_reset
// (backward), state mode, group width. Grid-uniform runtime switches, which never diverge and
// would only multiply the instantiations as templates: the surrogate (see common/surrogate.cuh),
// and the optional v_seq output and grad_v_seq input (nullptr when absent; else one extra store or
// load per step).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/dispatch.h"
#include "common/elementwise.cuh"
#include "common/multistep.cuh"
#include "common/reduce.cuh"
#include "common/surrogate.cuh"
#include "neuron/neuron_ops.h"

namespace spikekern {

// -------------------------------------------------------------------------------------------------
// Neuron dynamics.

// The spike, as a float, from H - v_threshold.
__device__ __forceinline__ float fires(float margin) { return margin >= 0.0f ? 1.0f : 0.0f; }

template <NeuronKind kKind, bool kDecayInput, bool kSoftReset>
struct Neuron {
  float tau;
  float decay;  // PLIF's k
  float v_threshold;
  float v_reset;
  float charge_grad_v;  // dH/dV[t-1], for backward

  __device__ explicit Neuron(const NeuronConfig& config)
      : tau(config.tau),
        decay(kKind == NeuronKind::kPLIF ? __ldg(config.decay) : 0.0f),
        v_threshold(config.v_threshold),
        v_reset(config.v_reset),
        charge_grad_v(kKind == NeuronKind::kLIF    ? 1.0f - 1.0f / tau
                      : kKind == NeuronKind::kPLIF ? 1.0f - decay
                                                   : 1.0f) {}

  // Forward: one intrinsic per operation, in the reference's order, so that nvcc cannot contract a
  // multiply-add into an FMA and the result is bit-identical to the PyTorch reference.
  __device__ __forceinline__ float charge(float v, float x) const {
    if constexpr (kKind == NeuronKind::kIF) {
      return __fadd_rn(v, x);
    } else if constexpr (kKind == NeuronKind::kLIF) {
      if constexpr (kDecayInput) {
        return __fadd_rn(v, __fdiv_rn(__fsub_rn(x, __fsub_rn(v, v_reset)), tau));
      } else {
        return __fadd_rn(__fsub_rn(v, __fdiv_rn(__fsub_rn(v, v_reset), tau)), x);
      }
    } else {
      if constexpr (kDecayInput) {
        return __fadd_rn(v, __fmul_rn(__fsub_rn(x, __fsub_rn(v, v_reset)), decay));
      } else {
        return __fadd_rn(__fsub_rn(v, __fmul_rn(__fsub_rn(v, v_reset), decay)), x);
      }
    }
  }

  // H - v_threshold: the spike is its sign, and compact state stores it.
  // Adding +0 turns a -0 margin (H = -0 at a zero threshold, which fires) into +0, so that the sign
  // bit of the stored compact state still says "fired".
  __device__ __forceinline__ float margin(float h) const {
    return __fadd_rn(__fsub_rn(h, v_threshold), 0.0f);
  }

  __device__ __forceinline__ float reset(float h, float spike) const {
    if constexpr (kSoftReset) {
      return __fsub_rn(h, __fmul_rn(spike, v_threshold));
    } else {
      return __fadd_rn(__fmul_rn(spike, v_reset), __fmul_rn(__fsub_rn(1.0f, spike), h));
    }
  }

  // Backward (tolerance-tested, so plain float math).
  template <bool kDetachReset>
  __device__ __forceinline__ float grad_v_wrt_h(float h, float spike, float surrogate) const {
    if constexpr (kSoftReset) {
      return kDetachReset ? 1.0f : 1.0f - v_threshold * surrogate;
    } else {
      return kDetachReset ? 1.0f - spike : (1.0f - spike) + (v_reset - h) * surrogate;
    }
  }

  __device__ __forceinline__ float grad_x_from_grad_h(float grad_h) const {
    if constexpr (kKind == NeuronKind::kLIF && kDecayInput) {
      return grad_h / tau;
    } else if constexpr (kKind == NeuronKind::kPLIF && kDecayInput) {
      return grad_h * decay;
    } else {
      return grad_h;
    }
  }

  __device__ __forceinline__ float grad_v_from_grad_h(float grad_h) const {
    return grad_h * charge_grad_v;
  }

  // q in dL/dw = (factor) * sum(grad_h * q); see docs/neuron_ops.md.
  __device__ __forceinline__ float plif_decay_term(float h, float v_previous) const {
    return kDecayInput ? h - v_previous : v_reset - v_previous;
  }
};

// One forward step for a group: charge, fire, reset. The forward kernel and the recomputing
// backward share it, so that both produce the same bits.
template <typename NeuronT, int N>
__device__ __forceinline__ void forward_step(const NeuronT& neuron, float (&v)[N],
                                             const float (&x)[N], float (&h)[N],
                                             float (&margin)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    h[i] = neuron.charge(v[i], x[i]);
    margin[i] = neuron.margin(h[i]);
    v[i] = neuron.reset(h[i], fires(margin[i]));
  }
}

// -------------------------------------------------------------------------------------------------
// Kernels. A group is kVec consecutive neurons m .. m + kVec - 1, whose elements of step t start
// at t * M + m. Each thread loads the next step's input before computing the current one, so that
// two loads per thread are in flight.

// The forward policy for common/multistep.cuh's multistep_forward_kernel; its constructor takes the
// kernel arguments after x_seq.

template <typename scalar_t, typename NeuronT, StateMode kMode>
struct NeuronForward {
  using Config = NeuronConfig;
  static constexpr StateMode kStateMode = kMode;

  NeuronT neuron;
  const scalar_t* v_init;
  scalar_t* spike_seq;
  scalar_t* v_last;
  StateElement<scalar_t, kMode>* state;
  scalar_t* v_seq;

  __device__ NeuronForward(const NeuronConfig& config, const scalar_t* v_init,
                           scalar_t* spike_seq, scalar_t* v_last,
                           StateElement<scalar_t, kMode>* state, scalar_t* v_seq)
      : neuron(config),
        v_init(v_init),
        spike_seq(spike_seq),
        v_last(v_last),
        state(state),
        v_seq(v_seq) {}

  template <int N>
  struct Registers {
    float v[N];
  };

  template <int N>
  __device__ __forceinline__ void begin_forward(int64_t m, Registers<N>& registers) const {
    load_initial_membrane(v_init, m, neuron.v_reset, registers.v);
  }

  template <int N>
  __device__ __forceinline__ void step(Registers<N>& registers, int64_t offset,
                                       const float (&x)[N]) const {
    float h[N];
    float margin[N];
    forward_step(neuron, registers.v, x, h, margin);
    float spike[N];
#pragma unroll
    for (int i = 0; i < N; ++i) spike[i] = fires(margin[i]);
    store_pack(spike_seq + offset, spike);
    store_state<kMode>(state + offset, h, margin);
    if (v_seq != nullptr) store_pack(v_seq + offset, registers.v);
  }

  template <int N>
  __device__ __forceinline__ void end_forward(const Registers<N>& registers, int64_t m) const {
    store_pack(v_last + m, registers.v);
  }
};

template <typename scalar_t, NeuronKind kKind, bool kDecayInput, bool kSoftReset, bool kDetachReset,
          StateMode kStateMode, int kVec>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerMultiprocessor)
    neuron_backward_kernel(const NeuronConfig config, const Surrogate surrogate, const float alpha,
                           const scalar_t* __restrict__ grad_spike,
                           const scalar_t* __restrict__ grad_v_last,
                           const scalar_t* __restrict__ grad_v_seq,
                           const StateElement<scalar_t, kStateMode>* __restrict__ state,
                           const scalar_t* __restrict__ v_init, scalar_t* __restrict__ grad_x,
                           scalar_t* __restrict__ grad_v_init, float* __restrict__ plif_partials) {
  static_assert(kStateMode != StateMode::kNone, "backward needs a state");
  constexpr bool kPLIF = kKind == NeuronKind::kPLIF;
  constexpr bool kRecompute = kStateMode == StateMode::kRecompute;
  // kRecompute: H[t] of every step, in shared memory (recompute_slot).
  extern __shared__ float recomputed_charges[];
  const auto charge_slot = [&](int64_t t, int i) -> float& {
    return recompute_slot<kVec>(recomputed_charges, t, i);
  };
  // The state of step t, as floats: H, H - v_threshold (compact mode), or the recomputed H.
  const auto load_saved = [&](int64_t t, int64_t m, float(&saved)[kVec]) {
    if constexpr (kRecompute) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) saved[i] = charge_slot(t, i);
    } else {
      load_pack(state + t * config.num_neurons + m, saved);
    }
  };

  const Neuron<kKind, kDecayInput, kSoftReset> neuron(config);
  const int64_t num_steps = config.num_steps;
  const int64_t num_neurons = config.num_neurons;
  const int64_t num_groups = num_neurons / kVec;
  float plif_sum = 0.0f;  // this thread's share of P

  for (int64_t group = first_item(); group < num_groups; group += item_stride()) {
    const int64_t m = group * kVec;
    float grad_v[kVec];  // dL/dV[t], walking t downwards
    if (grad_v_last != nullptr) {
      load_pack(grad_v_last + m, grad_v);
    } else {
      fill(grad_v, 0.0f);
    }
    float v_start[kVec];  // V[-1]: PLIF's dH/dk at t = 0, and the start of the recomputation
    if constexpr (kPLIF || kRecompute) load_initial_membrane(v_init, m, config.v_reset, v_start);

    if constexpr (kRecompute) {
      // `state` is x_seq: re-run the forward, with the forward's operations, into shared memory.
      float v[kVec];
      copy(v, v_start);
      float x_next[kVec];
      load_pack(state + m, x_next);
      for (int64_t t = 0; t < num_steps; ++t) {
        float x[kVec];
        copy(x, x_next);
        if (t + 1 < num_steps) load_pack(state + (t + 1) * num_neurons + m, x_next);
        float h[kVec];
        float margin[kVec];
        forward_step(neuron, v, x, h, margin);
#pragma unroll
        for (int i = 0; i < kVec; ++i) charge_slot(t, i) = h[i];
      }
    }

    float saved[kVec];
    float saved_previous[kVec] = {};  // step t - 1: prefetched, and PLIF recomputes V[t-1] from it
    load_saved(num_steps - 1, m, saved);

    for (int64_t t = num_steps - 1; t >= 0; --t) {
      const int64_t offset = t * num_neurons + m;
      if (t > 0) load_saved(t - 1, m, saved_previous);
      float grad_s[kVec];
      load_pack(grad_spike + offset, grad_s);
      // V[t] is an output too: its gradient joins the one flowing back from step t + 1.
      if (grad_v_seq != nullptr) {
        float grad_v_out[kVec];
        load_pack(grad_v_seq + offset, grad_v_out);
#pragma unroll
        for (int i = 0; i < kVec; ++i) grad_v[i] += grad_v_out[i];
      }

      float grad_in[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const SavedStep step = decode_saved_step<kStateMode, fires>(saved[i], neuron.v_threshold);
        const float g = surrogate_grad(surrogate, alpha, step.margin);
        const float grad_h =
            grad_s[i] * g +
            grad_v[i] * neuron.template grad_v_wrt_h<kDetachReset>(step.h, step.spike, g);
        grad_in[i] = neuron.grad_x_from_grad_h(grad_h);
        grad_v[i] = neuron.grad_v_from_grad_h(grad_h);
        if constexpr (kPLIF) {
          float v_previous = v_start[i];
          if (t > 0) {
            const SavedStep previous =
                decode_saved_step<kStateMode, fires>(saved_previous[i], neuron.v_threshold);
            v_previous = neuron.reset(previous.h, previous.spike);
          }
          plif_sum += grad_h * neuron.plif_decay_term(step.h, v_previous);
        }
      }
      store_pack(grad_x + offset, grad_in);
      copy(saved, saved_previous);
    }
    store_pack(grad_v_init + m, grad_v);
  }

  if constexpr (kPLIF) {
    // Every thread reaches this point (the loop above has no early exit), as block_sum requires.
    const float block_total = block_sum<kBlockSize>(plif_sum);
    if (threadIdx.x == 0) plif_partials[blockIdx.x] = block_total;
  }
}

// -------------------------------------------------------------------------------------------------
// Host-side dispatch from runtime flags to kernel instantiations.

// Calls body(kind, decay_input, soft_reset) as constants. IF has no decay, so only
// decay_input=false is instantiated for it: 5 (kind, decay_input) pairs times 2 resets.
template <typename Body>
void dispatch_neuron(const NeuronConfig& config, Body&& body) {
  dispatch_bool(config.soft_reset, [&](auto soft_reset) {
    switch (config.kind) {
      case NeuronKind::kIF:
        body(Constant<NeuronKind::kIF>{}, std::false_type{}, soft_reset);
        break;
      case NeuronKind::kLIF:
        dispatch_bool(config.decay_input, [&](auto decay_input) {
          body(Constant<NeuronKind::kLIF>{}, decay_input, soft_reset);
        });
        break;
      case NeuronKind::kPLIF:
        dispatch_bool(config.decay_input, [&](auto decay_input) {
          body(Constant<NeuronKind::kPLIF>{}, decay_input, soft_reset);
        });
        break;
    }
  });
}

// The neuron's group width has no cap of its own (a full 16-byte pack) beyond the recompute tile's.
constexpr int kMaxNeuronGroupWidth = kPackBytes;

template <typename scalar_t>
void launch_neuron_forward_typed(const NeuronForwardArgs& args, const LaunchPlan& plan,
                                 cudaStream_t stream) {
  const NeuronConfig& config = args.config;
  dispatch_neuron(config, [&](auto kind, auto decay_input, auto soft_reset) {
    dispatch_kernel_shape</*kBackward=*/false, kMaxNeuronGroupWidth, scalar_t>(
        config.state_mode, plan, config.num_steps,
        [&](auto state_mode, auto vec, dim3 grid, size_t shared_bytes) {
          constexpr StateMode kStateMode = decltype(state_mode)::value;
          using NeuronT = Neuron<decltype(kind)::value, decltype(decay_input)::value,
                                 decltype(soft_reset)::value>;
          multistep_forward_kernel<NeuronForward<scalar_t, NeuronT, kStateMode>,
                                   decltype(vec)::value>
              <<<grid, kBlockSize, shared_bytes, stream>>>(
                  config, static_cast<const scalar_t*>(args.x_seq),
                  static_cast<const scalar_t*>(args.v_init),
                  static_cast<scalar_t*>(args.spike_seq), static_cast<scalar_t*>(args.v_last),
                  static_cast<StateElement<scalar_t, kStateMode>*>(args.state),
                  static_cast<scalar_t*>(args.v_seq));
        });
  });
}

template <typename scalar_t>
void launch_neuron_backward_typed(const NeuronBackwardArgs& args, const LaunchPlan& plan,
                                  cudaStream_t stream) {
  const NeuronConfig& config = args.config;
  dispatch_neuron(config, [&](auto kind, auto decay_input, auto soft_reset) {
    dispatch_bool(args.detach_reset, [&](auto detach_reset) {
      dispatch_kernel_shape</*kBackward=*/true, kMaxNeuronGroupWidth, scalar_t>(
          config.state_mode, plan, config.num_steps,
          [&](auto state_mode, auto vec, dim3 grid, size_t shared_bytes) {
            constexpr StateMode kStateMode = decltype(state_mode)::value;
            neuron_backward_kernel<scalar_t, decltype(kind)::value, decltype(decay_input)::value,
                                   decltype(soft_reset)::value, decltype(detach_reset)::value,
                                   kStateMode, decltype(vec)::value>
                <<<grid, kBlockSize, shared_bytes, stream>>>(
                    config, args.surrogate, args.alpha,
                    static_cast<const scalar_t*>(args.grad_spike),
                    static_cast<const scalar_t*>(args.grad_v_last),
                    static_cast<const scalar_t*>(args.grad_v_seq),
                    static_cast<const StateElement<scalar_t, kStateMode>*>(args.state),
                    static_cast<const scalar_t*>(args.v_init),
                    static_cast<scalar_t*>(args.grad_x),
                    static_cast<scalar_t*>(args.grad_v_init), args.plif_partials);
          });
    });
  });
}

// Instantiated once per element type in neuron_{forward,backward}_<type>.cu.
extern template void launch_neuron_forward_typed<float>(
    const NeuronForwardArgs&, const LaunchPlan&, cudaStream_t);
extern template void launch_neuron_forward_typed<__half>(
    const NeuronForwardArgs&, const LaunchPlan&, cudaStream_t);
extern template void launch_neuron_forward_typed<__nv_bfloat16>(
    const NeuronForwardArgs&, const LaunchPlan&, cudaStream_t);
extern template void launch_neuron_backward_typed<float>(
    const NeuronBackwardArgs&, const LaunchPlan&, cudaStream_t);
extern template void launch_neuron_backward_typed<__half>(
    const NeuronBackwardArgs&, const LaunchPlan&, cudaStream_t);
extern template void launch_neuron_backward_typed<__nv_bfloat16>(
    const NeuronBackwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
