// CUDA kernel of conv_bn_lif_inference (contract: conv_bn_lif_ops.h) and its launcher.
//
// A block owns a 64 x 64 tile of output pixels (n, oh, ow) by output channels of one group and
// walks t = 0 .. T-1. Per step, a shared-memory tiled implicit GEMM computes the convolution: the
// reduction over (c, kh, kw), in the weight's own order, runs kTileK elements at a time, each
// thread gathering its pixel's input elements (zeros for padding) and the block loading a weight
// tile; float32 accumulation. The folded bias is added and the neuron steps with the LIF op's own
// arithmetic (Neuron and forward_step from neuron_kernels.cuh: one rounding per operation, no FMA),
// the membrane held in registers across steps. Only the spikes are written.
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "common/dispatch.h"
#include "common/elementwise.cuh"
#include "common/multistep.cuh"  // dispatch_element_type
#include "fused/conv_bn_lif_ops.h"
#include "neuron/neuron_kernels.cuh"  // Neuron, forward_step, fires

namespace spikekern {
namespace {

// 256 threads as a 16 x 16 grid, each owning 4 x 4 outputs of the tile: thread (tx, ty) has pixels
// ty + 16 i and output channels tx + 16 j, so a warp reads 16 consecutive shared columns.
constexpr int kThreads = 256;
constexpr int kSide = 16;
constexpr int kPerThread = 4;
constexpr int kTile = kSide * kPerThread;
constexpr int kOutputsPerThread = kPerThread * kPerThread;
constexpr int kTileK = 32;  // reduction elements per shared-memory step
static_assert(kTile == kConvBnLifTile, "the op sizes the grid with kConvBnLifTile");
static_assert(kThreads % kTile == 0, "each thread gathers the input of one fixed pixel of the tile");

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename scalar_t, NeuronKind kKind, bool kDecayInput, bool kSoftReset>
__global__ void __launch_bounds__(kThreads) conv_bn_lif_kernel(const ConvBnLifArgs args) {
  __shared__ float input_tile[kTileK][kTile];  // [reduction][pixel]
  // [reduction][output channel]; the padding column keeps the transposing stores conflict-free.
  __shared__ float weight_tile[kTileK][kTile + 1];
  const Neuron<kKind, kDecayInput, kSoftReset> neuron(args.neuron);
  const auto* x_seq = static_cast<const scalar_t*>(args.x_seq);
  const auto* weight = static_cast<const scalar_t*>(args.weight);
  const auto* v_init = static_cast<const scalar_t*>(args.v_init);
  auto* spike_seq = static_cast<scalar_t*>(args.spike_seq);
  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;

  const int64_t pixels_per_image = args.out_height * args.out_width;
  const int64_t num_pixels = args.batch * pixels_per_image;
  const int64_t image_size = args.height * args.width;
  const int64_t channels_per_group = args.in_channels / args.groups;
  const int64_t out_per_group = args.out_channels / args.groups;
  const int64_t blocks_per_group = ceil_div(out_per_group, kTile);
  const int64_t group = blockIdx.y / blocks_per_group;
  const int64_t first_out = group * out_per_group + blockIdx.y % blocks_per_group * kTile;
  const int64_t end_out = (group + 1) * out_per_group;
  const int64_t first_pixel = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t taps = args.kernel_h * args.kernel_w;
  const int64_t reduction = channels_per_group * taps;  // a weight row: (c, kh, kw)

  // The pixel whose input this thread gathers, and its window's top-left corner.
  const int gather_column = threadIdx.x % kTile;
  const int64_t gather_pixel = first_pixel + gather_column;
  const bool gather_valid = gather_pixel < num_pixels;
  const int64_t gather_image = gather_pixel / pixels_per_image;
  const int64_t gather_oh = gather_pixel % pixels_per_image / args.out_width;
  const int64_t gather_ow = gather_pixel % args.out_width;
  const int64_t row_start = gather_oh * args.stride_h - args.pad_h;
  const int64_t column_start = gather_ow * args.stride_w - args.pad_w;
  const int64_t first_channel = group * channels_per_group;

  // This thread's outputs: offset of (n, oc, oh, ow) in one step's [N, OC, OH, OW], -1 outside.
  int64_t out_offset[kOutputsPerThread];
  float bias[kOutputsPerThread];
  float v[kOutputsPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t pixel = first_pixel + ty + kSide * i;
      const int64_t out = first_out + tx + kSide * j;
      const bool valid = pixel < num_pixels && out < end_out;
      const int k = i * kPerThread + j;
      out_offset[k] = valid ? (pixel / pixels_per_image * args.out_channels + out) * pixels_per_image +
                                  pixel % pixels_per_image
                            : -1;
      bias[k] = valid && args.bias != nullptr ? args.bias[out] : 0.0f;
      v[k] = valid && v_init != nullptr ? to_float(v_init[out_offset[k]]) : args.neuron.v_reset;
    }
  }
  const int64_t step_inputs = args.batch * args.in_channels * image_size;
  const int64_t step_outputs = args.batch * args.out_channels * pixels_per_image;

  for (int64_t t = 0; t < args.neuron.num_steps; ++t) {
    const scalar_t* image = x_seq + t * step_inputs + gather_image * args.in_channels * image_size;
    float acc[kOutputsPerThread] = {};
    for (int64_t k0 = 0; k0 < reduction; k0 += kTileK) {
      for (int r = threadIdx.x / kTile; r < kTileK; r += kThreads / kTile) {
        const int64_t k = k0 + r;
        float value = 0.0f;
        if (gather_valid && k < reduction) {
          const int64_t tap = k % taps;
          const int64_t ih = row_start + tap / args.kernel_w * args.dil_h;
          const int64_t iw = column_start + tap % args.kernel_w * args.dil_w;
          if (ih >= 0 && ih < args.height && iw >= 0 && iw < args.width) {
            value = to_float(image[(first_channel + k / taps) * image_size + ih * args.width + iw]);
          }
        }
        input_tile[r][gather_column] = value;
      }
      // A warp loads kTileK consecutive reduction elements of one output channel (coalesced).
      for (int e = threadIdx.x; e < kTileK * kTile; e += kThreads) {
        const int local_out = e / kTileK;
        const int r = e % kTileK;
        const int64_t out = first_out + local_out;
        const int64_t k = k0 + r;
        weight_tile[r][local_out] =
            out < end_out && k < reduction ? to_float(weight[out * reduction + k]) : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int r = 0; r < kTileK; ++r) {
        float a[kPerThread];
        float b[kPerThread];
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) a[i] = input_tile[r][ty + kSide * i];
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) b[j] = weight_tile[r][tx + kSide * j];
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
#pragma unroll
          for (int j = 0; j < kPerThread; ++j) {
            acc[i * kPerThread + j] = fmaf(a[i], b[j], acc[i * kPerThread + j]);
          }
        }
      }
      __syncthreads();  // the tiles are overwritten next step
    }
    float x[kOutputsPerThread];
#pragma unroll
    for (int k = 0; k < kOutputsPerThread; ++k) x[k] = __fadd_rn(acc[k], bias[k]);
    float h[kOutputsPerThread];
    float margin[kOutputsPerThread];
    forward_step(neuron, v, x, h, margin);
    scalar_t* spikes = spike_seq + t * step_outputs;
#pragma unroll
    for (int k = 0; k < kOutputsPerThread; ++k) {
      if (out_offset[k] >= 0) spikes[out_offset[k]] = from_float<scalar_t>(fires(margin[k]));
    }
  }
}

// Calls body(kind, decay_input, soft_reset) as constants for IF (decay_input false) and LIF.
template <typename Body>
void dispatch_if_lif(const NeuronConfig& config, Body&& body) {
  dispatch_bool(config.soft_reset, [&](auto soft_reset) {
    if (config.kind == NeuronKind::kIF) {
      body(Constant<NeuronKind::kIF>{}, std::false_type{}, soft_reset);
    } else {
      dispatch_bool(config.decay_input, [&](auto decay_input) {
        body(Constant<NeuronKind::kLIF>{}, decay_input, soft_reset);
      });
    }
  });
}

}  // namespace

void launch_conv_bn_lif_inference(const ConvBnLifArgs& args, cudaStream_t stream) {
  const int64_t num_pixels = args.batch * args.out_height * args.out_width;
  const int64_t out_per_group = args.out_channels / args.groups;
  const dim3 grid(static_cast<unsigned>(ceil_div(num_pixels, kTile)),
                  static_cast<unsigned>(args.groups * ceil_div(out_per_group, kTile)));
  dispatch_element_type(args.neuron.element_type, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    dispatch_if_lif(args.neuron, [&](auto kind, auto decay_input, auto soft_reset) {
      conv_bn_lif_kernel<scalar_t, decltype(kind)::value, decltype(decay_input)::value,
                         decltype(soft_reset)::value><<<grid, kThreads, 0, stream>>>(args);
    });
  });
}

}  // namespace spikekern
