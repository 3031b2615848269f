// Host-side interface between the torch ops (spike_ops.cpp) and the CUDA kernels
// (spike_kernels.cu) of the spike ops: pack/unpack and spike_linear's kernels on bit-packed spikes.
// Plain structs and raw pointers only, so the .cu file compiles without torch headers.
// Format and summation orders: docs/spike_ops.md.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/multistep.h"  // ElementType

namespace spikekern {

// Spike k of a row is bit k % 32 of word k / 32; the padding bits of the last word are zero.
constexpr int kBitsPerWord = 32;

struct PackArgs {
  int64_t rows;
  int64_t k_total;        // spikes per row
  int64_t words_per_row;  // ceil(k_total / 32)
  ElementType element_type;
  const void* spikes;  // [rows, k_total], contiguous
  int32_t* packed;     // [rows, words_per_row]
  int32_t* invalid;    // one flag set to 1 if a spike is neither 0 nor 1; nullptr: no check
};

struct UnpackArgs {
  int64_t rows;
  int64_t k_total;
  int64_t words_per_row;
  ElementType element_type;
  const int32_t* packed;  // [rows, words_per_row]
  void* spikes;           // [rows, k_total], contiguous
};

// out [M, N] = spikes [M, K] @ weight^T + bias, with the spikes read from their packed words.
struct SpikeLinearForwardArgs {
  int64_t rows;          // M
  int64_t in_features;   // K
  int64_t out_features;  // N
  int64_t words_per_row;
  ElementType element_type;
  const int32_t* packed;  // [M, words_per_row]
  const void* weight;     // dense path: weight [N, K]; sparse path: its transpose [K, N]
  const void* bias;       // [N] or nullptr
  void* out;              // [M, N]
};

// grad_weight [N, K] = grad_out^T [N, M] @ spikes [M, K].
struct SpikeLinearGradWeightArgs {
  int64_t rows;
  int64_t in_features;
  int64_t out_features;
  int64_t words_per_row;
  ElementType element_type;
  const void* grad_out;   // [M, N]
  const int32_t* packed;  // [M, words_per_row]
  void* grad_weight;      // [N, K]
};

// Output blocks run along gridDim.y (at most 65535 blocks) in the spike_linear kernels, whose
// blocks cover at least 64 outputs: the ops refuse more outputs than this.
constexpr int64_t kMaxSpikeLinearOutFeatures = int64_t{65535} * 64;

// Each launcher enqueues one kernel on `stream` without synchronising; the caller checks the launch
// error. The grid must not be empty: pack needs rows * words_per_row >= 1, unpack
// rows * k_total >= 1, the forwards M >= 1 and N >= 1 (K may be 0), the weight gradients N >= 1 and
// K >= 1 (M may be 0).
void launch_pack_spikes(const PackArgs& args, int multiprocessor_count, cudaStream_t stream);
void launch_unpack_spikes(const UnpackArgs& args, int multiprocessor_count, cudaStream_t stream);
void launch_spike_linear_dense_forward(const SpikeLinearForwardArgs& args, cudaStream_t stream);
void launch_spike_linear_sparse_forward(const SpikeLinearForwardArgs& args, cudaStream_t stream);
void launch_spike_linear_dense_grad_weight(const SpikeLinearGradWeightArgs& args,
                                           cudaStream_t stream);
void launch_spike_linear_sparse_grad_weight(const SpikeLinearGradWeightArgs& args,
                                            cudaStream_t stream);

}  // namespace spikekern
