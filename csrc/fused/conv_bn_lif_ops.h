// Host-side interface between the torch op (conv_bn_lif_ops.cpp) and the CUDA kernel
// (conv_bn_lif_kernels.cu) of conv_bn_lif_inference. Plain structs and raw pointers only, so the
// .cu file compiles without torch headers. Contract: spikekern/ops/conv_bn_lif.py, docs/conv_bn_lif.md.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "neuron/neuron_ops.h"  // NeuronConfig

namespace spikekern {

// spikes[t] = neuron step of (conv2d(x_seq[t], weight) + bias), t = 0 .. T-1, with the membrane in
// registers. neuron.num_steps is T, neuron.kind IF or LIF, neuron.element_type that of x_seq, weight,
// v_init and the spikes; num_neurons, state_mode and decay are unused (left zero).
struct ConvBnLifArgs {
  NeuronConfig neuron;
  int64_t batch;
  int64_t in_channels;
  int64_t height;
  int64_t width;
  int64_t out_channels;
  int64_t out_height;
  int64_t out_width;
  int64_t kernel_h;
  int64_t kernel_w;
  int64_t stride_h;
  int64_t stride_w;
  int64_t pad_h;
  int64_t pad_w;
  int64_t dil_h;
  int64_t dil_w;
  int64_t groups;
  const void* x_seq;   // [T, N, C, H, W], contiguous
  const void* weight;  // [OC, C / groups, KH, KW], contiguous, BatchNorm folded in
  const float* bias;   // [OC] float32, BatchNorm folded in; nullptr: none
  const void* v_init;  // [N, OC, OH, OW] or nullptr (start from v_reset)
  void* spike_seq;     // [T, N, OC, OH, OW]
};

// Output-channel blocks of all groups run along gridDim.y (at most 65535 blocks): the op refuses
// problems whose groups * ceil(OC / groups / kConvBnLifTile) exceeds it.
constexpr int64_t kConvBnLifTile = 64;
constexpr int64_t kMaxGridY = 65535;

// Enqueues one kernel on `stream` without synchronising; needs T >= 1, N * OH * OW >= 1 and OC >= 1.
// The caller checks the launch error.
void launch_conv_bn_lif_inference(const ConvBnLifArgs& args, cudaStream_t stream);

}  // namespace spikekern
