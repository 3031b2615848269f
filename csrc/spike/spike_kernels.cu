// CUDA kernels of the spike ops on bit-packed spikes (format and summation orders:
// docs/spike_ops.md), and their launchers. float32 accumulation everywhere (tensor cores for the
// 16-bit dense GEMMs); 64-bit offsets.
#include <cstdint>

#include <cuda_runtime.h>

#include "common/elementwise.cuh"
#include "common/multistep.cuh"  // dispatch_element_type
#include "spike/spike_launch.cuh"
#include "spike/spike_ops.h"
#include "spike/spike_tile_gemm.cuh"

namespace spikekern {
namespace {

// Spikes per 16-byte access for element type T.
template <typename T>
constexpr int kSpikesPerPack = kPackBytes / static_cast<int>(sizeof(T));

bool is_pack_aligned(const void* pointer) {
  return reinterpret_cast<std::uintptr_t>(pointer) % kPackBytes == 0;
}

// ---------------------------------------------------------------------------------------------
// pack / unpack
// ---------------------------------------------------------------------------------------------

constexpr int kPackBlockSize = 256;

// A warp packs kSpikesPerLane words per step, reading 32 * kSpikesPerLane consecutive spikes with
// coalesced loads: each lane reads kSpikesPerLane spikes (one 16-byte pack, or 1 spike when the
// rows do not allow packs), sets their bits, and the kLanesPerWord lanes that share a word OR their
// bits (distinct bits, so the OR is the word). kSpikesPerLane > 1 needs k_total % 32 == 0 (no
// partial words, so a pack never leaves its row) and a 16-byte aligned input.
template <typename T, int kSpikesPerLane>
__global__ void __launch_bounds__(kPackBlockSize) pack_spikes_kernel(PackArgs args) {
  constexpr int kLanesPerWord = kBitsPerWord / kSpikesPerLane;
  static_assert(kBitsPerWord % kSpikesPerLane == 0, "a lane's spikes must lie in one word");
  const T* spikes = static_cast<const T*>(args.spikes);
  const int lane = threadIdx.x % kWarpSize;
  const int first_bit = lane % kLanesPerWord * kSpikesPerLane;
  const int64_t total_words = args.rows * args.words_per_row;
  const int64_t warp = first_item() / kWarpSize;
  const int64_t warps = item_stride() / kWarpSize;
  bool invalid = false;
  // The loop bound is the same for the whole warp, so every lane takes part in the shuffles.
  for (int64_t first_word = warp * kSpikesPerLane; first_word < total_words;
       first_word += warps * kSpikesPerLane) {
    const int64_t word = first_word + lane / kLanesPerWord;
    uint32_t bits = 0;
    if (word < total_words) {
      const int64_t row = word / args.words_per_row;
      const int64_t k = word % args.words_per_row * kBitsPerWord + first_bit;
      float values[kSpikesPerLane];
      if constexpr (kSpikesPerLane > 1) {
        load_pack<kSpikesPerLane>(spikes + row * args.k_total + k, values);
      } else {
        values[0] = k < args.k_total ? to_float(spikes[row * args.k_total + k]) : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kSpikesPerLane; ++i) {
        bits |= static_cast<uint32_t>(values[i] != 0.0f) << (first_bit + i);
        invalid |= values[i] != 0.0f && values[i] != 1.0f;
      }
    }
#pragma unroll
    for (int offset = kLanesPerWord / 2; offset > 0; offset /= 2) {
      bits |= __shfl_xor_sync(kFullWarpMask, bits, offset);
    }
    if (lane % kLanesPerWord == 0 && word < total_words) {
      args.packed[word] = static_cast<int32_t>(bits);
    }
  }
  flag_invalid_spikes(invalid, args.invalid);
}

// Each thread writes kSpikesPerThread consecutive spikes of one row (one 16-byte pack, or 1 spike),
// all from one word: needs k_total % kSpikesPerThread == 0, which also keeps the packs aligned in
// the freshly allocated output.
template <typename T, int kSpikesPerThread>
__global__ void __launch_bounds__(kPackBlockSize) unpack_spikes_kernel(UnpackArgs args) {
  static_assert(kBitsPerWord % kSpikesPerThread == 0, "a thread's spikes must lie in one word");
  T* spikes = static_cast<T*>(args.spikes);
  const int64_t total_packs = args.rows * args.k_total / kSpikesPerThread;
  for (int64_t pack = first_item(); pack < total_packs; pack += item_stride()) {
    const int64_t first_spike = pack * kSpikesPerThread;
    const int64_t row = first_spike / args.k_total;
    const int64_t k = first_spike % args.k_total;
    const auto word =
        static_cast<uint32_t>(args.packed[row * args.words_per_row + k / kBitsPerWord]);
    const int first_bit = static_cast<int>(k % kBitsPerWord);
    float values[kSpikesPerThread];
#pragma unroll
    for (int i = 0; i < kSpikesPerThread; ++i) {
      values[i] = static_cast<float>((word >> (first_bit + i)) & 1u);
    }
    store_pack<kSpikesPerThread>(spikes + first_spike, values);
  }
}

// ---------------------------------------------------------------------------------------------
// spike_linear, dense path: tiled GEMMs (spike_tile_gemm.cuh) on the spike words; float32 in SIMT
// fmaf order, float16/bfloat16 on tensor cores
// ---------------------------------------------------------------------------------------------

// out [M, N] tile of 64 rows x 64 outputs; the K loop steps one word (32 inputs) at a time and skips
// words that are zero in all 64 rows. A float32 product fmaf(spike, weight, acc) with spike 0 or 1
// is exactly acc + weight or acc.
template <typename T>
__global__ void __launch_bounds__(kThreads, kTiledBlocksPerMultiprocessor)
    spike_linear_dense_forward_kernel(SpikeLinearForwardArgs args) {
  using Engine = TileEngine<T>;
  __shared__ typename Engine::Operands operands;
  __shared__ uint32_t spike_words[kTile];
  const T* weight = static_cast<const T*>(args.weight);
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t first_out = static_cast<int64_t>(blockIdx.y) * kTile;
  Engine engine;
  for (int64_t word_index = 0; word_index < args.words_per_row; ++word_index) {
    uint32_t word = 0;
    if (threadIdx.x < kTile) {
      const int64_t row = first_row + threadIdx.x;
      if (row < args.rows) {
        word = static_cast<uint32_t>(args.packed[row * args.words_per_row + word_index]);
      }
      spike_words[threadIdx.x] = word;
    }
    // Rows silent over these 32 inputs add nothing: skip the step (also the barrier that publishes
    // spike_words).
    if (!__syncthreads_or(word != 0)) continue;
    set_a_spike_bits<Engine>(operands, spike_words);
    // b[k][column] = weight[out, k]: a warp loads 32 consecutive inputs of one output row
    // (coalesced).
    for (int e = threadIdx.x; e < kStep * kTile; e += kThreads) {
      const int column = e / kStep;
      const int bit = e % kStep;
      const int64_t out = first_out + column;
      const int64_t k = word_index * kBitsPerWord + bit;
      Engine::set_b(operands, bit, column,
                    out < args.out_features && k < args.in_features
                        ? to_float(weight[out * args.in_features + k])
                        : 0.0f);
    }
    __syncthreads();
    engine.step(operands);
    __syncthreads();  // the operands are overwritten next step
  }
  store_tile_with_bias(engine, operands, static_cast<T*>(args.out), static_cast<const T*>(args.bias),
                       first_row, args.rows, first_out, args.out_features - first_out,
                       args.out_features);
}

// grad_weight [N, K] tile of 64 outputs (rows) x 64 inputs (columns, two words), stepping 32 rows
// of grad_out at a time; steps whose spike words are all zero are skipped.
template <typename T>
__global__ void __launch_bounds__(kThreads, kTiledBlocksPerMultiprocessor)
    spike_linear_dense_grad_weight_kernel(SpikeLinearGradWeightArgs args) {
  using Engine = TileEngine<T>;
  __shared__ typename Engine::Operands operands;
  __shared__ uint32_t spike_words[kStep][kWordsPerTile];
  const T* grad_out = static_cast<const T*>(args.grad_out);
  const int64_t first_word = static_cast<int64_t>(blockIdx.x) * kWordsPerTile;
  const int64_t first_out = static_cast<int64_t>(blockIdx.y) * kTile;
  Engine engine;
  for (int64_t first_row = 0; first_row < args.rows; first_row += kStep) {
    uint32_t word = 0;
    if (threadIdx.x < kStep * kWordsPerTile) {
      const int local_row = threadIdx.x / kWordsPerTile;
      const int local_word = threadIdx.x % kWordsPerTile;
      const int64_t row = first_row + local_row;
      const int64_t word_index = first_word + local_word;
      if (row < args.rows && word_index < args.words_per_row) {
        word = static_cast<uint32_t>(args.packed[row * args.words_per_row + word_index]);
      }
      spike_words[local_row][local_word] = word;
    }
    if (!__syncthreads_or(word != 0)) continue;
    // a[row = output][k = grad_out row]: a warp loads 32 consecutive outputs of one grad_out row
    // (coalesced); b[k][column = input]: the expanded spike bits.
    for (int e = threadIdx.x; e < kStep * kTile; e += kThreads) {
      const int local_row = e / kTile;
      const int column = e % kTile;
      const int64_t row = first_row + local_row;
      const int64_t out = first_out + column;
      Engine::set_a(operands, column, local_row,
                    row < args.rows && out < args.out_features
                        ? to_float(grad_out[row * args.out_features + out])
                        : 0.0f);
    }
    set_b_spike_bits<Engine>(operands, spike_words);
    __syncthreads();
    engine.step(operands);
    __syncthreads();  // the operands are overwritten next step
  }
  T* grad_weight = static_cast<T*>(args.grad_weight);
  engine.finish(operands, [&](int row, int column, float value) {
    const int64_t out = first_out + row;
    const int64_t k = first_word * kBitsPerWord + column;
    if (out < args.out_features && k < args.in_features) {
      grad_weight[out * args.in_features + k] = from_float<T>(value);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// spike_linear, sparse path: skip zero words, add in the documented order
// ---------------------------------------------------------------------------------------------

constexpr int kSparseThreads = 128;

// One block per input row and kSparseThreads * kOutsPerThread outputs. The row's words are walked
// in order and each word's set bits from the lowest, so the transposed weight rows [K, N] are added
// in ascending input index, to a float32 sum that starts at +0; then the bias; then one rounding:
// the order of spike_linear.ordered_masked_sum, and of the Triton sparse kernel. kOutsPerThread > 1
// (one 16-byte pack) needs N % kOutsPerThread == 0 and 16-byte aligned weight_t, bias and out.
template <typename T, int kOutsPerThread>
__global__ void __launch_bounds__(kSparseThreads)
    spike_linear_sparse_forward_kernel(SpikeLinearForwardArgs args) {
  const int64_t row = blockIdx.x;
  const int64_t first_out =
      (static_cast<int64_t>(blockIdx.y) * kSparseThreads + threadIdx.x) * kOutsPerThread;
  if (first_out >= args.out_features) return;  // no barriers below
  const T* weight_t = static_cast<const T*>(args.weight);
  const int32_t* row_words = args.packed + row * args.words_per_row;
  float acc[kOutsPerThread];
  fill(acc, 0.0f);
  for (int64_t word_index = 0; word_index < args.words_per_row; ++word_index) {
    // Every thread reads the same word (a broadcast), so the loop below does not diverge.
    for (auto word = static_cast<uint32_t>(row_words[word_index]); word != 0; word &= word - 1) {
      const int64_t k = word_index * kBitsPerWord + (__ffs(static_cast<int>(word)) - 1);
      float weights[kOutsPerThread];
      load_pack<kOutsPerThread>(weight_t + k * args.out_features + first_out, weights);
#pragma unroll
      for (int i = 0; i < kOutsPerThread; ++i) acc[i] += weights[i];
    }
  }
  if (args.bias != nullptr) {
    float bias[kOutsPerThread];
    load_pack<kOutsPerThread>(static_cast<const T*>(args.bias) + first_out, bias);
#pragma unroll
    for (int i = 0; i < kOutsPerThread; ++i) acc[i] += bias[i];
  }
  store_pack<kOutsPerThread>(static_cast<T*>(args.out) + row * args.out_features + first_out, acc);
}

// One block per word (32 inputs) and kSparseThreads outputs; each thread owns one output and the
// word's 32 inputs. Rows whose word is zero are skipped; the others add their grad_out value to
// the set bits' sums, in ascending row order from +0 (ordered_masked_sum's order, as in Triton).
// The sums leave through shared memory so that a warp stores 32 consecutive inputs of one output.
template <typename T>
__global__ void __launch_bounds__(kSparseThreads)
    spike_linear_sparse_grad_weight_kernel(SpikeLinearGradWeightArgs args) {
  __shared__ float sums[kSparseThreads][kBitsPerWord + 1];  // padded: conflict-free columns
  const T* grad_out = static_cast<const T*>(args.grad_out);
  const int64_t word_index = blockIdx.x;
  const int64_t first_out = static_cast<int64_t>(blockIdx.y) * kSparseThreads;
  const int64_t out = first_out + threadIdx.x;
  float acc[kBitsPerWord];
  fill(acc, 0.0f);
  if (out < args.out_features) {
    for (int64_t row = 0; row < args.rows; ++row) {
      const auto word = static_cast<uint32_t>(args.packed[row * args.words_per_row + word_index]);
      if (word == 0) continue;
      const float grad = to_float(grad_out[row * args.out_features + out]);
#pragma unroll
      for (int bit = 0; bit < kBitsPerWord; ++bit) {
        if ((word >> bit) & 1u) acc[bit] += grad;
      }
    }
  }
#pragma unroll
  for (int bit = 0; bit < kBitsPerWord; ++bit) sums[threadIdx.x][bit] = acc[bit];
  __syncthreads();
  T* grad_weight = static_cast<T*>(args.grad_weight);
  for (int e = threadIdx.x; e < kSparseThreads * kBitsPerWord; e += kSparseThreads) {
    const int local_out = e / kBitsPerWord;
    const int bit = e % kBitsPerWord;
    const int64_t store_out = first_out + local_out;
    const int64_t k = word_index * kBitsPerWord + bit;
    if (store_out < args.out_features && k < args.in_features) {
      grad_weight[store_out * args.in_features + k] = from_float<T>(sums[local_out][bit]);
    }
  }
}

static_assert(kTile >= 64 && kSparseThreads >= 64,
              "kMaxSpikeLinearOutFeatures assumes blocks of at least 64 outputs");

}  // namespace

void launch_pack_spikes(const PackArgs& args, int multiprocessor_count, cudaStream_t stream) {
  dispatch_element_type(args.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    constexpr int kSpikes = kSpikesPerPack<T>;
    const int64_t total_words = args.rows * args.words_per_row;
    if (args.k_total % kBitsPerWord == 0 && is_pack_aligned(args.spikes)) {
      const unsigned blocks = grid_stride_blocks(ceil_div(total_words, kSpikes) * kWarpSize,
                                                 kPackBlockSize, multiprocessor_count);
      pack_spikes_kernel<T, kSpikes><<<blocks, kPackBlockSize, 0, stream>>>(args);
    } else {
      const unsigned blocks =
          grid_stride_blocks(total_words * kWarpSize, kPackBlockSize, multiprocessor_count);
      pack_spikes_kernel<T, 1><<<blocks, kPackBlockSize, 0, stream>>>(args);
    }
  });
}

void launch_unpack_spikes(const UnpackArgs& args, int multiprocessor_count, cudaStream_t stream) {
  dispatch_element_type(args.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    constexpr int kSpikes = kSpikesPerPack<T>;
    const int64_t total_spikes = args.rows * args.k_total;
    if (args.k_total % kSpikes == 0 && is_pack_aligned(args.spikes)) {
      const unsigned blocks = grid_stride_blocks(total_spikes / kSpikes, kPackBlockSize,
                                                 multiprocessor_count);
      unpack_spikes_kernel<T, kSpikes><<<blocks, kPackBlockSize, 0, stream>>>(args);
    } else {
      const unsigned blocks =
          grid_stride_blocks(total_spikes, kPackBlockSize, multiprocessor_count);
      unpack_spikes_kernel<T, 1><<<blocks, kPackBlockSize, 0, stream>>>(args);
    }
  });
}

void launch_spike_linear_dense_forward(const SpikeLinearForwardArgs& args, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(args.rows, kTile)),
                  static_cast<unsigned>(ceil_div(args.out_features, kTile)));
  dispatch_element_type(args.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    spike_linear_dense_forward_kernel<T><<<grid, kThreads, 0, stream>>>(args);
  });
}

void launch_spike_linear_sparse_forward(const SpikeLinearForwardArgs& args, cudaStream_t stream) {
  dispatch_element_type(args.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    constexpr int kOuts = kSpikesPerPack<T>;
    const bool packs = args.out_features % kOuts == 0 && is_pack_aligned(args.weight) &&
                       is_pack_aligned(args.out) &&
                       (args.bias == nullptr || is_pack_aligned(args.bias));
    const int outs_per_thread = packs ? kOuts : 1;
    const dim3 grid(static_cast<unsigned>(args.rows),
                    static_cast<unsigned>(
                        ceil_div(args.out_features, int64_t{kSparseThreads} * outs_per_thread)));
    if (packs) {
      spike_linear_sparse_forward_kernel<T, kOuts><<<grid, kSparseThreads, 0, stream>>>(args);
    } else {
      spike_linear_sparse_forward_kernel<T, 1><<<grid, kSparseThreads, 0, stream>>>(args);
    }
  });
}

void launch_spike_linear_dense_grad_weight(const SpikeLinearGradWeightArgs& args,
                                           cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(args.words_per_row, kWordsPerTile)),
                  static_cast<unsigned>(ceil_div(args.out_features, kTile)));
  dispatch_element_type(args.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    spike_linear_dense_grad_weight_kernel<T><<<grid, kThreads, 0, stream>>>(args);
  });
}

void launch_spike_linear_sparse_grad_weight(const SpikeLinearGradWeightArgs& args,
                                            cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(args.words_per_row),
                  static_cast<unsigned>(ceil_div(args.out_features, kSparseThreads)));
  dispatch_element_type(args.element_type, [&](auto element) {
    using T = typename decltype(element)::type;
    spike_linear_sparse_grad_weight_kernel<T><<<grid, kSparseThreads, 0, stream>>>(args);
  });
}

}  // namespace spikekern
