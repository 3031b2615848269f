// CUDA kernels of spike_conv2d on bit-packed, channels-last spikes, and their launchers. Layouts
// and summation orders: spike_conv2d.h; design notes: docs/spike_conv2d_cuda.md. float32
// accumulation everywhere; pixel, row and element offsets are 64-bit.
#include <cstdint>

#include <cuda_runtime.h>

#include "common/elementwise.cuh"
#include "common/multistep.cuh"  // dispatch_element_type
#include "spike/spike_conv2d.h"
#include "spike/spike_launch.cuh"
#include "spike/spike_ops.h"  // kBitsPerWord
#include "spike/spike_tile_gemm.cuh"

namespace spikekern {
namespace {

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

int64_t output_rows(const Conv2dGeometry& g) { return g.batch * g.out_height * g.out_width; }

// ---------------------------------------------------------------------------------------------
// Geometry: which pixel feeds which, and the channel bits of a pixel
// ---------------------------------------------------------------------------------------------

// A pixel index over the batch split into its image and coordinates: one 64-bit division, then
// 32-bit arithmetic (an image has fewer than 2^31 pixels).
struct PixelCoordinates {
  int64_t n;
  int y;
  int x;
};

__device__ __forceinline__ PixelCoordinates split_pixel(int64_t index, int height, int width) {
  const int64_t plane = static_cast<int64_t>(height) * width;
  const int64_t n = index / plane;
  const auto rest = static_cast<int>(index - n * plane);
  return {n, rest / width, rest % width};
}

// The input pixel (packed row) that output pixel (n, oh, ow) reads at tap (kh, kw), or -1 where
// the tap lands in the padding.
__device__ __forceinline__ int64_t input_pixel(const Conv2dGeometry& g, const PixelCoordinates& out,
                                               int kh, int kw) {
  const int ih = out.y * g.stride_h - g.pad_h + kh * g.dil_h;
  const int iw = out.x * g.stride_w - g.pad_w + kw * g.dil_w;
  if (ih < 0 || ih >= g.height || iw < 0 || iw >= g.width) return -1;
  return (out.n * g.height + ih) * g.width + iw;
}

// Input pixels by stride phase (ih % stride_h, iw % stride_w): a tap reaches the input rows of one
// residue modulo the stride only, so a tile of one phase skips the taps that cannot reach it whole.
struct StridePhases {
  int64_t rows;              // ceil(H / stride_h): input rows of the first (largest) phase
  int64_t columns;           // ceil(W / stride_w)
  int64_t pixels;            // N * rows * columns: pixels of the largest phase, masked past the others'
  int64_t blocks_per_phase;  // tiles of kTile pixels per phase
};

__host__ __device__ inline StridePhases stride_phases(const Conv2dGeometry& g, int64_t tile) {
  const int64_t rows = ceil_div(g.height, g.stride_h);
  const int64_t columns = ceil_div(g.width, g.stride_w);
  const int64_t pixels = g.batch * rows * columns;
  return {rows, columns, pixels, ceil_div(pixels, tile)};
}

// Pixel `local` of stride phase `phase` (ph = phase / stride_w, pw = phase % stride_w) as an input
// pixel index over the batch, or -1 past that phase's pixels.
__device__ __forceinline__ int64_t phase_pixel(const Conv2dGeometry& g, const StridePhases& phases,
                                               int64_t phase, int64_t local) {
  if (local >= phases.pixels) return -1;
  const int64_t n = local / (phases.rows * phases.columns);
  const int64_t rest = local - n * phases.rows * phases.columns;
  const auto ih = static_cast<int>(phase / g.stride_w + (rest / phases.columns) * g.stride_h);
  const auto iw = static_cast<int>(phase % g.stride_w + (rest % phases.columns) * g.stride_w);
  if (ih >= g.height || iw >= g.width) return -1;
  return (n * g.height + ih) * g.width + iw;
}

// The inverse map: the output pixel (grad_out row) that reads input pixel (n, ih, iw) at tap
// (kh, kw), or -1 where none does (the stride steps over it, or it is past the output's edge).
__device__ __forceinline__ int64_t output_row(const Conv2dGeometry& g, const PixelCoordinates& in,
                                              int kh, int kw) {
  const int oh_strided = in.y + g.pad_h - kh * g.dil_h;
  const int ow_strided = in.x + g.pad_w - kw * g.dil_w;
  if (oh_strided < 0 || ow_strided < 0 || oh_strided % g.stride_h != 0 ||
      ow_strided % g.stride_w != 0) {
    return -1;
  }
  const int oh = oh_strided / g.stride_h;
  const int ow = ow_strided / g.stride_w;
  if (oh >= g.out_height || ow >= g.out_width) return -1;
  return (in.n * g.out_height + oh) * g.out_width + ow;
}

// Bits 0 .. count - 1 (count <= 32) are the spikes of channels first_channel .. first_channel +
// count - 1 of one pixel, the other bits zero. A group's channels need not start on a word
// boundary: such a chunk takes its high bits from the next word (a funnel shift).
__device__ __forceinline__ uint32_t channel_chunk(const int32_t* pixel_words,
                                                  int64_t words_per_pixel, int64_t first_channel,
                                                  int64_t count) {
  const int64_t word = first_channel / kBitsPerWord;
  const auto shift = static_cast<unsigned>(first_channel % kBitsPerWord);
  const auto low = static_cast<uint32_t>(pixel_words[word]);
  const uint32_t high = shift != 0 && word + 1 < words_per_pixel
                            ? static_cast<uint32_t>(pixel_words[word + 1])
                            : 0u;
  const uint32_t bits = __funnelshift_r(low, high, shift);
  return count >= kBitsPerWord ? bits : bits & ((1u << count) - 1u);
}

// Blocks along one grid dimension tile each group's `per_group` channels `tile` at a time, so a
// block lies in one group: its group and the block's first channel inside the group.
struct GroupBlock {
  int64_t group;
  int64_t first;
};

// 32-bit division: a grid dimension holds fewer than 2^31 blocks.
template <int kTileSize>
__device__ __forceinline__ GroupBlock group_block(unsigned block, int64_t per_group) {
  const auto blocks_per_group = static_cast<unsigned>((per_group + kTileSize - 1) / kTileSize);
  return {block / blocks_per_group, static_cast<int64_t>(block % blocks_per_group) * kTileSize};
}

// ---------------------------------------------------------------------------------------------
// pack: NCHW spikes -> channels-last words
// ---------------------------------------------------------------------------------------------

constexpr int kPackThreads = 256;

// One thread per (image, word, pixel), pixels fastest: a warp reads 32 consecutive pixels of one
// channel plane per load (coalesced, 32 loads per word) and writes the pixels' words.
template <typename T>
__global__ void __launch_bounds__(kPackThreads) conv2d_pack_nchw_kernel(Conv2dPackArgs args) {
  const T* spikes = static_cast<const T*>(args.spikes);
  const int64_t plane = args.pixels_per_image;
  const int64_t total = args.batch * args.words_per_pixel * plane;
  bool invalid = false;
  for (int64_t item = first_item(); item < total; item += item_stride()) {
    const int64_t image_word = item / plane;
    const int64_t pixel = item - image_word * plane;
    const int64_t n = image_word / args.words_per_pixel;
    const int64_t word = image_word - n * args.words_per_pixel;
    const int64_t first_channel = word * kBitsPerWord;
    const auto bits_here =
        static_cast<int>(min64(kBitsPerWord, args.channels - first_channel));
    const T* source = spikes + (n * args.channels + first_channel) * plane + pixel;
    uint32_t bits = 0;
    for (int bit = 0; bit < bits_here; ++bit) {
      const float value = to_float(source[bit * plane]);
      bits |= static_cast<uint32_t>(value != 0.0f) << bit;
      invalid |= value != 0.0f && value != 1.0f;
    }
    args.packed[(n * plane + pixel) * args.words_per_pixel + word] = static_cast<int32_t>(bits);
  }
  flag_invalid_spikes(invalid, args.invalid);  // after the loop: every lane takes part
}

static_assert(kTile == kConv2dTile, "the ops size the grids with kConv2dTile");

// ---------------------------------------------------------------------------------------------
// Dense forward: out [M, OC] = per tap, spikes [M, C/g] @ weight_by_tap[kh, kw] [C/g, OC/g]
// ---------------------------------------------------------------------------------------------

// One block per 64 output pixels (rows) and 64 output channels of one group; the reduction walks
// the taps and the group's channels 32 at a time. A step whose 64 x 32 spike tile is all zero
// (silence or padding) is skipped; otherwise the bits are expanded to 0/1 in shared memory.
template <typename T>
__global__ void __launch_bounds__(kThreads, kTiledBlocksPerMultiprocessor)
    conv2d_dense_forward_kernel(Conv2dForwardArgs args) {
  using Engine = TileEngine<T>;
  __shared__ typename Engine::Operands operands;
  __shared__ uint32_t chunks[kTile];
  const Conv2dGeometry& g = args.geometry;
  const T* weight = static_cast<const T*>(args.weight_by_tap);
  const int64_t rows = g.batch * g.out_height * g.out_width;
  const int64_t channels_per_group = g.channels_per_group;
  const int64_t outs_per_group = g.outs_per_group;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kTile;
  const GroupBlock block = group_block<kTile>(blockIdx.y, outs_per_group);
  const int64_t first_out = block.group * outs_per_group + block.first;
  const int64_t outs_here = min64(kTile, outs_per_group - block.first);
  // Threads below kTile read the spikes of tile row threadIdx.x.
  const bool reads_row = threadIdx.x < kTile && first_row + threadIdx.x < rows;
  const PixelCoordinates out_pixel =
      reads_row ? split_pixel(first_row + threadIdx.x, g.out_height, g.out_width)
                : PixelCoordinates{};
  Engine engine;
  for (int kh = 0; kh < g.kernel_h; ++kh) {
    for (int kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t tap = kh * g.kernel_w + kw;
      const int32_t* pixel_words = nullptr;  // the tile row's input pixel; none in the padding
      if (reads_row) {
        const int64_t pixel = input_pixel(g, out_pixel, kh, kw);
        if (pixel >= 0) pixel_words = args.packed + pixel * g.words_per_pixel;
      }
      for (int64_t c0 = 0; c0 < channels_per_group; c0 += kStep) {
        const int64_t count = min64(kStep, channels_per_group - c0);
        uint32_t chunk = 0;
        if (threadIdx.x < kTile) {
          if (pixel_words != nullptr) {
            chunk = channel_chunk(pixel_words, g.words_per_pixel,
                                  block.group * channels_per_group + c0, count);
          }
          chunks[threadIdx.x] = chunk;
        }
        // Also the barrier that publishes `chunks`.
        if (!__syncthreads_or(chunk != 0)) continue;
        set_a_spike_bits<Engine>(operands, chunks);
        // A warp loads 32 consecutive output channels of one weight row (coalesced).
        const T* weight_rows =
            weight + (tap * channels_per_group + c0) * g.out_channels + first_out;
        for (int e = threadIdx.x; e < kStep * kTile; e += kThreads) {
          const int k = e / kTile;
          const int column = e % kTile;
          Engine::set_b(operands, k, column,
                        k < count && column < outs_here
                            ? to_float(weight_rows[k * g.out_channels + column])
                            : 0.0f);
        }
        __syncthreads();
        engine.step(operands);
        __syncthreads();  // the operands are overwritten next step
      }
    }
  }
  store_tile_with_bias(engine, operands, static_cast<T*>(args.out), static_cast<const T*>(args.bias),
                       first_row, rows, first_out, outs_here, g.out_channels);
}

// ---------------------------------------------------------------------------------------------
// Sparse forward: event-driven, one output pixel per block
// ---------------------------------------------------------------------------------------------

constexpr int kSparseThreads = kConv2dSparseOutputs;

// One block per output pixel and 128 output channels of one group; each thread owns one output.
// Per tap (row-major) the block walks the group's channel chunks of the input pixel, skips zero
// chunks and adds the weight of each set bit from the lowest: the order spike_conv2d.h documents.
// Every thread reads the same chunks (broadcast), so the loops do not diverge.
template <typename T>
__global__ void __launch_bounds__(kSparseThreads)
    conv2d_sparse_forward_kernel(Conv2dForwardArgs args) {
  const Conv2dGeometry& g = args.geometry;
  const int64_t channels_per_group = g.channels_per_group;
  const int64_t outs_per_group = g.outs_per_group;
  const int64_t row = blockIdx.x;
  const GroupBlock block = group_block<kSparseThreads>(blockIdx.y, outs_per_group);
  const int64_t local_out = block.first + threadIdx.x;
  if (local_out >= outs_per_group) return;  // no barriers below
  const int64_t oc = block.group * outs_per_group + local_out;
  const T* weight = static_cast<const T*>(args.weight_by_tap);
  const PixelCoordinates out_pixel = split_pixel(row, g.out_height, g.out_width);
  float acc = 0.0f;
  for (int kh = 0; kh < g.kernel_h; ++kh) {
    for (int kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t pixel = input_pixel(g, out_pixel, kh, kw);
      if (pixel < 0) continue;
      const int32_t* pixel_words = args.packed + pixel * g.words_per_pixel;
      // weight_by_tap[kh, kw, c, oc] for the group's channels c, contiguous along oc (coalesced).
      const T* tap_weight =
          weight + (kh * g.kernel_w + kw) * channels_per_group * g.out_channels + oc;
      for (int64_t c0 = 0; c0 < channels_per_group; c0 += kStep) {
        for (uint32_t chunk = channel_chunk(pixel_words, g.words_per_pixel,
                                            block.group * channels_per_group + c0,
                                            min64(kStep, channels_per_group - c0));
             chunk != 0; chunk &= chunk - 1) {
          const int64_t c = c0 + __ffs(static_cast<int>(chunk)) - 1;
          acc += to_float(tap_weight[c * g.out_channels]);
        }
      }
    }
  }
  if (args.bias != nullptr) acc += to_float(static_cast<const T*>(args.bias)[oc]);
  static_cast<T*>(args.out)[row * g.out_channels + oc] = from_float<T>(acc);
}

// ---------------------------------------------------------------------------------------------
// grad_weight [OC, C/g, KH, KW]: per tap, grad_out^T [OC/g, M] @ spikes at the tap [M, C/g]
// ---------------------------------------------------------------------------------------------

// One block per 64 output channels (rows) and 64 input channels (columns) of one group and one
// tap (blockIdx.z); the reduction walks the output pixels 32 at a time, and steps whose spike
// chunks are all zero skip the grad_out load and the product.
template <typename T>
__global__ void __launch_bounds__(kThreads, kTiledBlocksPerMultiprocessor)
    conv2d_dense_grad_weight_kernel(Conv2dGradWeightArgs args) {
  using Engine = TileEngine<T>;
  __shared__ typename Engine::Operands operands;
  __shared__ uint32_t chunks[kStep][kWordsPerTile];
  const Conv2dGeometry& g = args.geometry;
  const T* grad_out = static_cast<const T*>(args.grad_out);
  const int64_t rows = g.batch * g.out_height * g.out_width;
  const int64_t channels_per_group = g.channels_per_group;
  const int64_t outs_per_group = g.outs_per_group;
  const GroupBlock block = group_block<kTile>(blockIdx.x, outs_per_group);
  const int64_t first_out = block.group * outs_per_group + block.first;
  const int64_t outs_here = min64(kTile, outs_per_group - block.first);
  const int64_t first_channel = static_cast<int64_t>(blockIdx.y) * kTile;  // within the group
  const int kh = static_cast<int>(blockIdx.z) / g.kernel_w;
  const int kw = static_cast<int>(blockIdx.z) % g.kernel_w;
  Engine engine;
  for (int64_t first_row = 0; first_row < rows; first_row += kStep) {
    uint32_t chunk = 0;
    if (threadIdx.x < kStep * kWordsPerTile) {
      const int step_row = threadIdx.x / kWordsPerTile;
      const int half = threadIdx.x % kWordsPerTile;
      const int64_t row = first_row + step_row;
      const int64_t c0 = first_channel + half * kBitsPerWord;
      if (row < rows && c0 < channels_per_group) {
        const int64_t pixel =
            input_pixel(g, split_pixel(row, g.out_height, g.out_width), kh, kw);
        if (pixel >= 0) {
          chunk = channel_chunk(args.packed + pixel * g.words_per_pixel, g.words_per_pixel,
                                block.group * channels_per_group + c0,
                                min64(kBitsPerWord, channels_per_group - c0));
        }
      }
      chunks[step_row][half] = chunk;
    }
    if (!__syncthreads_or(chunk != 0)) continue;
    // a[k = output pixel][row = output channel]: a warp loads 32 consecutive output channels of
    // one grad_out row (coalesced); b[k][column = input channel]: the expanded spike bits.
    for (int e = threadIdx.x; e < kStep * kTile; e += kThreads) {
      const int k = e / kTile;
      const int column = e % kTile;
      const int64_t row = first_row + k;
      Engine::set_a(operands, column, k,
                        row < rows && column < outs_here
                            ? to_float(grad_out[row * g.out_channels + first_out + column])
                            : 0.0f);
    }
    set_b_spike_bits<Engine>(operands, chunks);
    __syncthreads();
    engine.step(operands);
    __syncthreads();  // the operands are overwritten next step
  }
  T* grad_weight = static_cast<T*>(args.grad_weight);
  engine.finish(operands, [&](int row, int column, float value) {
    const int64_t channel = first_channel + column;
    if (row < outs_here && channel < channels_per_group) {
      grad_weight[(((first_out + row) * channels_per_group + channel) * g.kernel_h + kh) *
                      g.kernel_w + kw] = from_float<T>(value);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// grad_input [N*H*W, C]: the transposed convolution, per tap grad_out rows @ weight_t[kh, kw]
// ---------------------------------------------------------------------------------------------

// One block per 64 input pixels (rows) of one stride phase and 64 input channels (columns) of one
// group. Per tap, each input pixel takes the grad_out row of the output pixel that read it there (none
// where the stride steps over it or it falls past the output: taps no pixel of the tile feeds, which
// within one phase are those that step over it, are skipped); the reduction walks the group's output
// channels 32 at a time.
template <typename T>
__global__ void __launch_bounds__(kThreads, kTiledBlocksPerMultiprocessor)
    conv2d_grad_input_kernel(Conv2dGradInputArgs args) {
  using Engine = TileEngine<T>;
  __shared__ typename Engine::Operands operands;
  __shared__ int64_t grad_rows[kTile];
  __shared__ int64_t tile_pixels[kTile];
  const Conv2dGeometry& g = args.geometry;
  const T* grad_out = static_cast<const T*>(args.grad_out);
  const T* weight_t = static_cast<const T*>(args.weight_t);
  const int64_t channels_per_group = g.channels_per_group;
  const int64_t outs_per_group = g.outs_per_group;
  const StridePhases phases = stride_phases(g, kTile);
  const int64_t phase = blockIdx.x / phases.blocks_per_phase;
  const int64_t first_local = (blockIdx.x % phases.blocks_per_phase) * kTile;
  const GroupBlock block = group_block<kTile>(blockIdx.y, channels_per_group);
  const int64_t channels_here = min64(kTile, channels_per_group - block.first);
  const int64_t group_first_out = block.group * outs_per_group;
  // Threads below kTile find the input pixel of tile row threadIdx.x and its grad_out rows.
  const int64_t pixel = threadIdx.x < kTile ? phase_pixel(g, phases, phase, first_local + threadIdx.x) : -1;
  if (threadIdx.x < kTile) tile_pixels[threadIdx.x] = pixel;
  const bool finds_rows = pixel >= 0;
  const PixelCoordinates in_pixel = finds_rows ? split_pixel(pixel, g.height, g.width) : PixelCoordinates{};
  Engine engine;
  for (int kh = 0; kh < g.kernel_h; ++kh) {
    for (int kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t grad_row = finds_rows ? output_row(g, in_pixel, kh, kw) : -1;
      if (threadIdx.x < kTile) grad_rows[threadIdx.x] = grad_row;
      if (!__syncthreads_or(grad_row >= 0)) continue;
      const T* tap_weight =
          weight_t + (kh * g.kernel_w + kw) * g.out_channels * channels_per_group + block.first;
      for (int64_t o0 = 0; o0 < outs_per_group; o0 += kStep) {
        const int64_t count = min64(kStep, outs_per_group - o0);
        const int64_t first_out = group_first_out + o0;
        // a[k = output channel][row = input pixel]: a warp loads 32 consecutive output channels of
        // one grad_out row (coalesced) and stores them transposed.
        for (int e = threadIdx.x; e < kTile * kStep; e += kThreads) {
          const int row = e / kStep;
          const int k = e % kStep;
          const int64_t source = grad_rows[row];
          Engine::set_a(operands, row, k,
                            source >= 0 && k < count
                                ? to_float(grad_out[source * g.out_channels + first_out + k])
                                : 0.0f);
        }
        // b[k][column]: weight_t[kh, kw, oc, c], a warp reads 32 consecutive channels (coalesced).
        for (int e = threadIdx.x; e < kStep * kTile; e += kThreads) {
          const int k = e / kTile;
          const int column = e % kTile;
          Engine::set_b(
              operands, k, column,
              k < count && column < channels_here
                  ? to_float(tap_weight[(first_out + k) * channels_per_group + column])
                  : 0.0f);
        }
        __syncthreads();
        engine.step(operands);
        __syncthreads();  // the operands (and grad_rows, after the last step) are overwritten next
      }
    }
  }
  T* grad_input = static_cast<T*>(args.grad_input);
  __syncthreads();  // tile_pixels, when every tap was skipped
  engine.finish(operands, [&](int row, int column, float value) {
    const int64_t target = tile_pixels[row];
    if (target >= 0 && column < channels_here) {
      grad_input[target * g.channels + block.group * channels_per_group + block.first + column] =
          from_float<T>(value);
    }
  });
}

// Blocks along a dimension that tiles each group's `per_group` channels `tile` at a time.
unsigned group_blocks(const Conv2dGeometry& g, int64_t per_group, int64_t tile) {
  return static_cast<unsigned>(g.groups * ceil_div(per_group, tile));
}

}  // namespace

void launch_spike_conv2d_pack_nchw(const Conv2dPackArgs& args, int multiprocessor_count,
                                   cudaStream_t stream) {
  const unsigned blocks =
      grid_stride_blocks(args.batch * args.words_per_pixel * args.pixels_per_image,
                         kPackThreads, multiprocessor_count);
  dispatch_element_type(args.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    conv2d_pack_nchw_kernel<T><<<blocks, kPackThreads, 0, stream>>>(args);
  });
}

void launch_spike_conv2d_dense_forward(const Conv2dForwardArgs& args, cudaStream_t stream) {
  const Conv2dGeometry& g = args.geometry;
  const dim3 grid(static_cast<unsigned>(ceil_div(output_rows(g), kTile)),
                  group_blocks(g, g.outs_per_group, kTile));
  dispatch_element_type(g.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    conv2d_dense_forward_kernel<T><<<grid, kThreads, 0, stream>>>(args);
  });
}

void launch_spike_conv2d_sparse_forward(const Conv2dForwardArgs& args, cudaStream_t stream) {
  const Conv2dGeometry& g = args.geometry;
  const dim3 grid(static_cast<unsigned>(output_rows(g)),
                  group_blocks(g, g.outs_per_group, kSparseThreads));
  dispatch_element_type(g.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    conv2d_sparse_forward_kernel<T><<<grid, kSparseThreads, 0, stream>>>(args);
  });
}

void launch_spike_conv2d_dense_grad_weight(const Conv2dGradWeightArgs& args, cudaStream_t stream) {
  const Conv2dGeometry& g = args.geometry;
  const dim3 grid(group_blocks(g, g.outs_per_group, kTile),
                  static_cast<unsigned>(ceil_div(g.channels_per_group, kTile)),
                  static_cast<unsigned>(g.kernel_h * g.kernel_w));
  dispatch_element_type(g.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    conv2d_dense_grad_weight_kernel<T><<<grid, kThreads, 0, stream>>>(args);
  });
}

void launch_spike_conv2d_grad_input(const Conv2dGradInputArgs& args, cudaStream_t stream) {
  const Conv2dGeometry& g = args.geometry;
  const dim3 grid(static_cast<unsigned>(g.stride_h * g.stride_w * stride_phases(g, kTile).blocks_per_phase),
                  group_blocks(g, g.channels_per_group, kTile));
  dispatch_element_type(g.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    conv2d_grad_input_kernel<T><<<grid, kThreads, 0, stream>>>(args);
  });
}

}  // namespace spikekern
