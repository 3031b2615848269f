// Fused multi-step kernels for snnTorch's Leaky neuron. Math, saved state and contract:
// docs/leaky_op.md.
//
// The layout is the neuron kernels' (neuron/neuron_kernels.cuh; both take their launch constants,
// state element types, saved-state coding and state-mode dispatch from common/multistep.cuh): one
// thread owns a group of neurons (one element, or a pack of up to 4) and walks all T steps with the
// membrane in registers, so every [T, M] tensor is read or written once, in coalesced rows. The
// forward kernel is common/multistep.cuh's multistep_forward_kernel with the LeakyForward policy
// below; the backward kernel is here.
//
// Compile-time switches: element type, reset mechanism, per-neuron or shared beta, state mode,
// group width. Grid-uniform runtime switches, which never diverge and would only multiply the
// instantiations as templates: the surrogate, mem_init and grad_mem (nullptr when absent), whether
// the membrane output is every step's or the last one, and which parameter gradients backward sums
// (nullptr partials when not needed).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/dispatch.h"
#include "common/elementwise.cuh"
#include "common/multistep.cuh"
#include "common/reduce.cuh"
#include "common/surrogate.cuh"
#include "leaky/leaky_ops.h"

namespace spikekern {

// At most 4 neurons per thread (8-byte accesses of 16-bit inputs instead of 16-byte ones): a
// per-neuron beta and the parameter-gradient sums take registers that wider groups would spill
// under the launch bounds' 64-register cap. The recomputing backward's shared-memory tile of
// [T][group width][kBlockSize] floats fits as the neuron kernels' does.
constexpr int kMaxLeakyGroupWidth = 4;
static_assert(kMaxLeakyGroupWidth <= kMaxRecomputeGroupWidth);

// -------------------------------------------------------------------------------------------------
// Dynamics.

// snnTorch fires on mem - threshold > 0, strictly (SpikingJelly's neurons fire on >= 0).
__device__ __forceinline__ float fires_above(float margin) { return margin > 0.0f ? 1.0f : 0.0f; }

// beta.clamp(0, 1) as torch computes it: a NaN stays NaN (fminf / fmaxf would drop it).
__device__ __forceinline__ float clamp_unit(float beta) {
  return beta < 0.0f ? 0.0f : (beta > 1.0f ? 1.0f : beta);
}

// mem - threshold with the sign bit set exactly where the neuron did not fire (margin <= 0 or NaN):
// rounding to bfloat16 keeps the sign bit but may flush a tiny positive margin to +0.
__device__ __forceinline__ float compact_margin(float margin) {
  return margin > 0.0f ? margin : -fabsf(margin);
}

template <ResetMechanism kReset>
struct Leaky {
  float threshold;

  // One step, one intrinsic per operation in snnTorch's order, so that nvcc cannot contract a
  // multiply-add into an FMA and the result is bit-identical to the PyTorch reference. The reset is
  // decided on the previous membrane (snnTorch's reset_delay=True).
  __device__ __forceinline__ float step(float mem, float x, float decay) const {
    if constexpr (kReset == ResetMechanism::kNone) {
      return __fadd_rn(__fmul_rn(decay, mem), x);
    } else {
      const float reset = fires_above(margin(mem));
      if constexpr (kReset == ResetMechanism::kSubtract) {
        return __fsub_rn(__fadd_rn(__fmul_rn(decay, mem), x), __fmul_rn(reset, threshold));
      } else {
        return __fadd_rn(__fmul_rn(decay, __fmul_rn(__fsub_rn(1.0f, reset), mem)), x);
      }
    }
  }

  __device__ __forceinline__ float margin(float mem) const { return __fsub_rn(mem, threshold); }
};

// One step for a group; the forward kernel and the recomputing backward share it, so that both
// produce the same bits.
template <ResetMechanism kReset, int N>
__device__ __forceinline__ void leaky_step(const Leaky<kReset>& leaky, const float (&decay)[N],
                                           const float (&x)[N], float (&mem)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) mem[i] = leaky.step(mem[i], x[i], decay[i]);
}

// The clamped beta of a group: its own values, or the shared one.
template <bool kPerNeuronBeta, int N>
__device__ __forceinline__ void load_decay(const float* beta, int64_t m, float (&decay)[N]) {
  if constexpr (kPerNeuronBeta) {
    load_pack(beta + m, decay);
  } else {
    fill(decay, __ldg(beta));
  }
#pragma unroll
  for (int i = 0; i < N; ++i) decay[i] = clamp_unit(decay[i]);
}

// -------------------------------------------------------------------------------------------------
// Kernels. A group is kVec consecutive neurons m .. m + kVec - 1, whose elements of step t start
// at t * M + m. Each thread loads the next step's input before computing the current one.

// The forward policy for common/multistep.cuh's multistep_forward_kernel; its constructor takes the
// kernel arguments after x_seq.
template <typename scalar_t, ResetMechanism kReset, bool kPerNeuronBeta, StateMode kMode>
struct LeakyForward {
  using Config = LeakyConfig;
  static constexpr StateMode kStateMode = kMode;

  Leaky<kReset> leaky;
  const float* beta;
  bool output_mem_seq;
  const scalar_t* mem_init;
  scalar_t* spike_seq;
  scalar_t* mem_out;
  StateElement<scalar_t, kMode>* state;

  __device__ LeakyForward(const LeakyConfig& config, const scalar_t* mem_init,
                          scalar_t* spike_seq, scalar_t* mem_out,
                          StateElement<scalar_t, kMode>* state)
      : leaky{__ldg(config.threshold)},
        beta(config.beta),
        output_mem_seq(config.output_mem_seq),
        mem_init(mem_init),
        spike_seq(spike_seq),
        mem_out(mem_out),
        state(state) {}

  template <int N>
  struct Registers {
    float decay[N];
    float mem[N];
  };

  template <int N>
  __device__ __forceinline__ void begin_forward(int64_t m, Registers<N>& registers) const {
    load_decay<kPerNeuronBeta>(beta, m, registers.decay);
    load_initial_membrane(mem_init, m, 0.0f, registers.mem);  // snnTorch starts from zeros
  }

  template <int N>
  __device__ __forceinline__ void step(Registers<N>& registers, int64_t offset,
                                       const float (&x)[N]) const {
    leaky_step(leaky, registers.decay, x, registers.mem);
    float spike[N];
    float compact[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float margin = leaky.margin(registers.mem[i]);
      spike[i] = fires_above(margin);
      compact[i] = compact_margin(margin);
    }
    store_pack(spike_seq + offset, spike);
    if (output_mem_seq) store_pack(mem_out + offset, registers.mem);
    store_state<kMode>(state + offset, registers.mem, compact);
  }

  template <int N>
  __device__ __forceinline__ void end_forward(const Registers<N>& registers, int64_t m) const {
    if (!output_mem_seq) store_pack(mem_out + m, registers.mem);
  }
};

template <typename scalar_t, ResetMechanism kReset, bool kPerNeuronBeta, StateMode kStateMode,
          int kVec>
__global__ void __launch_bounds__(kBlockSize, kMinBlocksPerMultiprocessor)
    leaky_backward_kernel(const LeakyConfig config, const Surrogate surrogate, const float alpha,
                          const scalar_t* __restrict__ grad_spike,
                          const scalar_t* __restrict__ grad_mem,
                          const StateElement<scalar_t, kStateMode>* __restrict__ state,
                          const scalar_t* __restrict__ mem_init, scalar_t* __restrict__ grad_x,
                          scalar_t* __restrict__ grad_mem_init, float* __restrict__ decay_partials,
                          float* __restrict__ threshold_partials) {
  static_assert(kStateMode != StateMode::kNone, "backward needs a state");
  constexpr bool kRecompute = kStateMode == StateMode::kRecompute;
  // kRecompute: mem[t] of every step, in shared memory (recompute_slot).
  extern __shared__ float recomputed_membranes[];
  const auto membrane_slot = [&](int64_t t, int i) -> float& {
    return recompute_slot<kVec>(recomputed_membranes, t, i);
  };
  // The state of step t, as floats: mem, the compact margin, or the recomputed mem.
  const auto load_saved = [&](int64_t t, int64_t m, float(&saved)[kVec]) {
    if constexpr (kRecompute) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) saved[i] = membrane_slot(t, i);
    } else {
      load_pack(state + t * config.num_neurons + m, saved);
    }
  };

  const Leaky<kReset> leaky{__ldg(config.threshold)};
  const int64_t num_steps = config.num_steps;
  const int64_t num_neurons = config.num_neurons;
  const int64_t num_groups = num_neurons / kVec;
  const bool grad_mem_per_step = grad_mem != nullptr && config.output_mem_seq;
  // This thread's shares of the shared beta's and the threshold's gradients.
  float decay_total = 0.0f;
  float threshold_total = 0.0f;

  for (int64_t group = first_item(); group < num_groups; group += item_stride()) {
    const int64_t m = group * kVec;
    float decay[kVec];
    load_decay<kPerNeuronBeta>(config.beta, m, decay);
    float mem_first[kVec];  // mem[-1]: step 0 starts and resets from it
    load_initial_membrane(mem_init, m, 0.0f, mem_first);
    float grad_carry[kVec];  // dL/dmem[t] through mem[t + 1], walking t downwards
    if (grad_mem != nullptr && !config.output_mem_seq) {
      load_pack(grad_mem + m, grad_carry);
    } else {
      fill(grad_carry, 0.0f);
    }

    if constexpr (kRecompute) {
      // `state` is x_seq: re-run the forward, with the forward's operations, into shared memory.
      float mem[kVec];
      copy(mem, mem_first);
      float x_next[kVec];
      load_pack(state + m, x_next);
      for (int64_t t = 0; t < num_steps; ++t) {
        float x[kVec];
        copy(x, x_next);
        if (t + 1 < num_steps) load_pack(state + (t + 1) * num_neurons + m, x_next);
        leaky_step(leaky, decay, x, mem);
#pragma unroll
        for (int i = 0; i < kVec; ++i) membrane_slot(t, i) = mem[i];
      }
    }

    float saved[kVec];
    float saved_previous[kVec] = {};  // step t - 1: prefetched, and it gives step t's reset
    load_saved(num_steps - 1, m, saved);
    float decay_sum[kVec];  // dL/d(clamped beta) of each neuron
    fill(decay_sum, 0.0f);

    for (int64_t t = num_steps - 1; t >= 0; --t) {
      const int64_t offset = t * num_neurons + m;
      if (t > 0) load_saved(t - 1, m, saved_previous);
      float grad_s[kVec];
      load_pack(grad_spike + offset, grad_s);
      float grad_out[kVec];  // mem[t] as an output of its own
      if (grad_mem_per_step) {
        load_pack(grad_mem + offset, grad_out);
      } else {
        fill(grad_out, 0.0f);
      }

      float grad_in[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const SavedStep now = decode_saved_step<kStateMode, fires_above>(saved[i], leaky.threshold);
        float mem_before = mem_first[i];
        float reset = fires_above(leaky.margin(mem_first[i]));
        if (t > 0) {
          const SavedStep before =
              decode_saved_step<kStateMode, fires_above>(saved_previous[i], leaky.threshold);
          mem_before = before.h;
          reset = before.spike;
        }
        // Backward is tolerance-tested, so plain float math from here on.
        const float grad_from_spike = grad_s[i] * surrogate_grad(surrogate, alpha, now.margin);
        const float grad = grad_from_spike + grad_carry[i] + grad_out[i];  // dL/dmem[t]
        grad_in[i] = grad;
        if constexpr (kReset == ResetMechanism::kZero) {
          decay_sum[i] += grad * ((1.0f - reset) * mem_before);
          grad_carry[i] = grad * (decay[i] * (1.0f - reset));
        } else {
          decay_sum[i] += grad * mem_before;
          grad_carry[i] = grad * decay[i];
        }
        // The spike fires on mem - threshold; a subtractive reset removes reset * threshold.
        threshold_total -= kReset == ResetMechanism::kSubtract ? grad_from_spike + grad * reset
                                                               : grad_from_spike;
      }
      store_pack(grad_x + offset, grad_in);
      copy(saved, saved_previous);
    }
    store_pack(grad_mem_init + m, grad_carry);
    if (decay_partials != nullptr) {
      if constexpr (kPerNeuronBeta) {
        store_pack(decay_partials + m, decay_sum);
      } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) decay_total += decay_sum[i];
      }
    }
  }

  // The conditions are grid-uniform, so every thread of the block calls block_sum, as it requires.
  if (!kPerNeuronBeta && decay_partials != nullptr) {
    const float block_total = block_sum<kBlockSize>(decay_total);
    if (threadIdx.x == 0) decay_partials[blockIdx.x] = block_total;
    __syncthreads();  // block_sum's shared scratch is reused by the next call
  }
  if (threshold_partials != nullptr) {
    const float block_total = block_sum<kBlockSize>(threshold_total);
    if (threadIdx.x == 0) threshold_partials[blockIdx.x] = block_total;
  }
}

// -------------------------------------------------------------------------------------------------
// Host-side dispatch from runtime flags to kernel instantiations.

// Calls body(reset, per_neuron_beta) as constants: 3 reset mechanisms times 2 kinds of beta.
template <typename Body>
void dispatch_leaky(const LeakyConfig& config, Body&& body) {
  dispatch_bool(config.per_neuron_beta, [&](auto per_neuron_beta) {
    switch (config.reset) {
      case ResetMechanism::kSubtract:
        body(Constant<ResetMechanism::kSubtract>{}, per_neuron_beta);
        break;
      case ResetMechanism::kZero:
        body(Constant<ResetMechanism::kZero>{}, per_neuron_beta);
        break;
      case ResetMechanism::kNone:
        body(Constant<ResetMechanism::kNone>{}, per_neuron_beta);
        break;
    }
  });
}

template <typename scalar_t>
void launch_leaky_forward_typed(const LeakyForwardArgs& args, const LaunchPlan& plan,
                                cudaStream_t stream) {
  const LeakyConfig& config = args.config;
  dispatch_leaky(config, [&](auto reset, auto per_neuron_beta) {
    dispatch_kernel_shape</*kBackward=*/false, kMaxLeakyGroupWidth, scalar_t>(
        config.state_mode, plan, config.num_steps,
        [&](auto state_mode, auto vec, dim3 grid, size_t shared_bytes) {
          constexpr StateMode kStateMode = decltype(state_mode)::value;
          multistep_forward_kernel<LeakyForward<scalar_t, decltype(reset)::value,
                                                decltype(per_neuron_beta)::value, kStateMode>,
                                   decltype(vec)::value>
              <<<grid, kBlockSize, shared_bytes, stream>>>(
                  config, static_cast<const scalar_t*>(args.x_seq),
                  static_cast<const scalar_t*>(args.mem_init),
                  static_cast<scalar_t*>(args.spike_seq), static_cast<scalar_t*>(args.mem_out),
                  static_cast<StateElement<scalar_t, kStateMode>*>(args.state));
        });
  });
}

template <typename scalar_t>
void launch_leaky_backward_typed(const LeakyBackwardArgs& args, const LaunchPlan& plan,
                                 cudaStream_t stream) {
  const LeakyConfig& config = args.config;
  dispatch_leaky(config, [&](auto reset, auto per_neuron_beta) {
    dispatch_kernel_shape</*kBackward=*/true, kMaxLeakyGroupWidth, scalar_t>(
        config.state_mode, plan, config.num_steps,
        [&](auto state_mode, auto vec, dim3 grid, size_t shared_bytes) {
          constexpr StateMode kStateMode = decltype(state_mode)::value;
          leaky_backward_kernel<scalar_t, decltype(reset)::value,
                                decltype(per_neuron_beta)::value, kStateMode, decltype(vec)::value>
              <<<grid, kBlockSize, shared_bytes, stream>>>(
                  config, args.surrogate, args.alpha,
                  static_cast<const scalar_t*>(args.grad_spike),
                  static_cast<const scalar_t*>(args.grad_mem),
                  static_cast<const StateElement<scalar_t, kStateMode>*>(args.state),
                  static_cast<const scalar_t*>(args.mem_init),
                  static_cast<scalar_t*>(args.grad_x),
                  static_cast<scalar_t*>(args.grad_mem_init), args.decay_partials,
                  args.threshold_partials);
        });
  });
}

// Instantiated once per element type in leaky_{forward,backward}_<type>.cu.
extern template void launch_leaky_forward_typed<float>(const LeakyForwardArgs&, const LaunchPlan&,
                                                       cudaStream_t);
extern template void launch_leaky_forward_typed<__half>(const LeakyForwardArgs&,
                                                        const LaunchPlan&, cudaStream_t);
extern template void launch_leaky_forward_typed<__nv_bfloat16>(const LeakyForwardArgs&,
                                                               const LaunchPlan&, cudaStream_t);
extern template void launch_leaky_backward_typed<float>(const LeakyBackwardArgs&,
                                                        const LaunchPlan&, cudaStream_t);
extern template void launch_leaky_backward_typed<__half>(const LeakyBackwardArgs&,
                                                         const LaunchPlan&, cudaStream_t);
extern template void launch_leaky_backward_typed<__nv_bfloat16>(const LeakyBackwardArgs&,
                                                                const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
