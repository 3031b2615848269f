// Host-side interface between the torch ops (spike_conv2d_ops.cpp) and the CUDA kernels
// (spike_conv2d_kernels.cu) of spike_conv2d on bit-packed, channels-last spikes. Plain structs and
// raw pointers only, so the .cu file compiles without torch headers. Design notes:
// docs/spike_conv2d_cuda.md.
//
// Layouts (all contiguous):
//   packed        [N, H, W, words_per_pixel] int32, words_per_pixel = ceil(C / 32): spike c of
//                 pixel (n, h, w) is bit c % 32 of word c / 32 (spike_pack's format, a pixel per
//                 row)
//   weight_by_tap [KH, KW, C/groups, OC]   (forwards: a tap's weight rows, contiguous along OC)
//   weight_t      [KH, KW, OC, C/groups]   (grad_input: contiguous along the input channels)
//   out, grad_out [N * OH * OW, OC]        rows: [N, OC, OH, OW] in channels-last memory
//   grad_input    [N * H * W, C]           rows: [N, C, H, W] in channels-last memory
//   grad_weight   [OC, C/groups, KH, KW]
//
// Summation orders (float32 accumulation from +0, one rounding to the output dtype at the end):
//   sparse forward: per output, taps in (kh, kw) row-major order; within a tap the set spikes of
//     the output's group in ascending channel order, each adding its weight; then the bias.
//   dense forward, float32: the same order (fmaf with a 0/1 spike adds the weight exactly or
//     nothing), so it equals the sparse forward bit for bit for finite weights.
//   dense forward, float16/bfloat16: tensor-core tiles of 32 channels, in the same tap and channel
//     block order; the order inside a tensor-core step is the hardware's.
//   grad_weight: per weight, output pixels in ascending order.
//   grad_input: taps in row-major order, output channels ascending.
//   Both gradients in float16/bfloat16: tensor-core tiles of 32 output pixels (grad_weight) or 32
//     output channels (grad_input) in that order; the order inside a tensor-core step is the hardware's.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "common/multistep.h"  // ElementType

namespace spikekern {

// The convolution's shape; every count is >= 0, kernel sizes, strides, dilations and groups >= 1,
// channels and out_channels divisible by groups. The spatial sizes are int: the ops check that the
// padded input, (H + 2 pad_h) x (W + 2 pad_w), has fewer than 2^31 pixels, which bounds every
// coordinate and H * W, OH * OW; pixel and row indices over the batch are int64.
struct Conv2dGeometry {
  int64_t batch;         // N
  int64_t channels;      // C
  int64_t out_channels;  // OC
  int64_t groups;
  int64_t channels_per_group;  // C / groups
  int64_t outs_per_group;      // OC / groups
  int64_t words_per_pixel;
  int height;      // H
  int width;       // W
  int out_height;  // OH = (H + 2 pad_h - dil_h (KH - 1) - 1) / stride_h + 1
  int out_width;   // OW
  int kernel_h;
  int kernel_w;
  int stride_h;
  int stride_w;
  int pad_h;
  int pad_w;
  int dil_h;
  int dil_w;
  ElementType element_type;  // of every float tensor
};

struct Conv2dPackArgs {
  int64_t batch;
  int64_t channels;
  int64_t pixels_per_image;  // H * W
  int64_t words_per_pixel;
  ElementType element_type;
  const void* spikes;  // [N, C, H, W]
  int32_t* packed;     // [N, H, W, words_per_pixel]
  int32_t* invalid;    // one flag set to 1 if a spike is neither 0 nor 1; nullptr: no check
};

struct Conv2dForwardArgs {
  Conv2dGeometry geometry;
  const int32_t* packed;
  const void* weight_by_tap;
  const void* bias;  // [OC] or nullptr
  void* out;
};

struct Conv2dGradWeightArgs {
  Conv2dGeometry geometry;
  const void* grad_out;
  const int32_t* packed;
  void* grad_weight;
};

struct Conv2dGradInputArgs {
  Conv2dGeometry geometry;
  const void* grad_out;
  const void* weight_t;
  void* grad_input;
};

// Grid limits the ops check before launching (gridDim.y and gridDim.z take at most 65535 blocks):
// blocks along y cover 64 output channels (dense, grad_input: 64 input channels) or 128 (sparse)
// of one group; the grad_weight grid has one z block per tap.
constexpr int64_t kMaxConv2dGridY = 65535;
constexpr int kConv2dTile = 64;            // dense and grad_input tile side
constexpr int kConv2dSparseOutputs = 128;  // output channels per sparse block

// Each launcher enqueues one kernel on `stream` without synchronising; the caller checks the launch
// error. The grid must not be empty: pack needs N * H * W * words_per_pixel >= 1, the forwards
// N * OH * OW >= 1 and OC >= 1, grad_weight OC >= 1, C >= 1 (N * OH * OW may be 0), grad_input
// N * H * W >= 1 and C >= 1 (OC may be 0).
void launch_spike_conv2d_pack_nchw(const Conv2dPackArgs& args, int multiprocessor_count,
                                   cudaStream_t stream);
void launch_spike_conv2d_dense_forward(const Conv2dForwardArgs& args, cudaStream_t stream);
void launch_spike_conv2d_sparse_forward(const Conv2dForwardArgs& args, cudaStream_t stream);
void launch_spike_conv2d_dense_grad_weight(const Conv2dGradWeightArgs& args, cudaStream_t stream);
void launch_spike_conv2d_grad_input(const Conv2dGradInputArgs& args, cudaStream_t stream);

}  // namespace spikekern
