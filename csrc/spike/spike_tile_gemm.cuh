// Tiled GEMM engines shared by the dense spike kernels (spike_kernels.cu: spike_linear;
// spike_conv2d_kernels.cu): a 64 x 64 output tile of 256 threads, a reduction step of 32 (one spike
// word), operands in shared memory. A kernel fills the operands with Engine::set_a / set_b between
// two barriers, calls step, and after its reduction hands finish a store(row, column, value)
// callback. SimtEngine: float32 fmaf in ascending k; WmmaEngine: tensor cores for float16/bfloat16.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>
#include <mma.h>

#include "common/elementwise.cuh"  // from_float
#include "spike/spike_launch.cuh"   // kWarpSize
#include "spike/spike_ops.h"        // kBitsPerWord

namespace spikekern {

constexpr int kThreads = 256;
constexpr int kTile = 64;        // output tile side
constexpr int kStep = 32;        // reduction per step: one word of spikes
constexpr int kSide = 16;        // threads per side of the SIMT thread grid
constexpr int kPerThread = 4;    // SIMT outputs per thread and side
static_assert(kSide * kSide == kThreads && kSide * kPerThread == kTile);
// Two resident blocks per SM for the tiled kernels (at most 128 registers per thread): the
// barriers of one block overlap the other's loads, and without the bound ptxas spills a few
// registers in the dense forwards.
constexpr int kTiledBlocksPerMultiprocessor = 2;
static_assert(kStep == kBitsPerWord, "a spike chunk is one 32-bit word");

// Calls store(row, column, value) for each of a thread's outputs: rows ty + 16 i, columns
// tx + 16 j, so that the 16 lanes of a half warp touch 16 consecutive columns.
template <typename Value, typename Store>
__device__ __forceinline__ void for_each_output(Value&& value, Store&& store) {
  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      store(ty + kSide * i, tx + kSide * j, value(i, j));
    }
  }
}

// Both operands k-major: a[k][row], b[k][column]. The padding column keeps the transposing stores
// (a warp writing 32 k of one row) free of bank conflicts.
struct SimtOperands {
  float a[kStep][kTile + 1];
  float b[kStep][kTile + 1];
};

// float32: each thread accumulates its 4 x 4 outputs with
// fmaf in ascending k. With a 0/1 operand, fmaf adds the other operand exactly or adds nothing.
struct SimtEngine {
  using Operands = SimtOperands;
  float acc[kPerThread][kPerThread] = {};

  __device__ static void set_a(Operands& s, int row, int k, float value) { s.a[k][row] = value; }
  __device__ static void set_b(Operands& s, int k, int column, float value) {
    s.b[k][column] = value;
  }

  __device__ void step(const Operands& s) {
    const int tx = threadIdx.x % kSide;
    const int ty = threadIdx.x / kSide;
#pragma unroll 8
    for (int k = 0; k < kStep; ++k) {
      float a[kPerThread];
      float b[kPerThread];
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        a[i] = s.a[k][ty + kSide * i];
        b[i] = s.b[k][tx + kSide * i];
      }
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
  }

  template <typename Store>
  __device__ void finish(Operands&, Store&& store) const {
    for_each_output([&](int i, int j) { return acc[i][j]; }, store);
  }
};

// float16/bfloat16: WMMA 16x16x16 tensor-core tiles, float32 accumulators. The 8 warps form a
// 4 x 2 grid, each warp owning one 16-row block and two 16-column blocks of the 64 x 64 tile.
constexpr int kWmmaSide = 16;
constexpr int kWmmaColumnsPerWarp = 2;
static_assert(kThreads / kWarpSize * kWmmaColumnsPerWarp * kWmmaSide * kWmmaSide ==
              kTile * kTile);
// Row paddings: 16-bit rows stay multiples of 16 bytes and float rows of 16 bytes, so every
// fragment pointer below is 32-byte aligned (load/store_matrix_sync's requirement) while
// consecutive rows start in different banks.
constexpr int kHalfPad = 8;
constexpr int kFloatPad = 4;

template <typename T>
struct alignas(32) WmmaOperands {
  T a[kTile][kStep + kHalfPad];    // [row][k], row-major A
  T b[kStep][kTile + kHalfPad];    // [k][column], row-major B
  float c[kTile][kTile + kFloatPad];  // the accumulators, staged for the epilogue
};

template <typename T>
struct WmmaEngine {
  using Operands = WmmaOperands<T>;
  using Accumulator =
      nvcuda::wmma::fragment<nvcuda::wmma::accumulator, kWmmaSide, kWmmaSide, kWmmaSide, float>;
  Accumulator acc[kWmmaColumnsPerWarp];

  __device__ WmmaEngine() {
#pragma unroll
    for (auto& fragment : acc) nvcuda::wmma::fill_fragment(fragment, 0.0f);
  }

  __device__ static void set_a(Operands& s, int row, int k, float value) {
    s.a[row][k] = from_float<T>(value);
  }
  __device__ static void set_b(Operands& s, int k, int column, float value) {
    s.b[k][column] = from_float<T>(value);
  }

  __device__ static int row_block() { return threadIdx.x / kWarpSize / 2; }
  __device__ static int first_column_block() {
    return threadIdx.x / kWarpSize % 2 * kWmmaColumnsPerWarp;
  }

  __device__ void step(const Operands& s) {
    using namespace nvcuda;
#pragma unroll
    for (int k = 0; k < kStep; k += kWmmaSide) {
      wmma::fragment<wmma::matrix_a, kWmmaSide, kWmmaSide, kWmmaSide, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, &s.a[row_block() * kWmmaSide][k], kStep + kHalfPad);
#pragma unroll
      for (int c = 0; c < kWmmaColumnsPerWarp; ++c) {
        wmma::fragment<wmma::matrix_b, kWmmaSide, kWmmaSide, kWmmaSide, T, wmma::row_major> b;
        wmma::load_matrix_sync(b, &s.b[k][(first_column_block() + c) * kWmmaSide],
                               kTile + kHalfPad);
        wmma::mma_sync(acc[c], a, b, acc[c]);
      }
    }
  }

  // The fragments' element layout is opaque: they go through shared memory to the SIMT thread
  // mapping, whose stores are coalesced.
  template <typename Store>
  __device__ void finish(Operands& s, Store&& store) const {
#pragma unroll
    for (int c = 0; c < kWmmaColumnsPerWarp; ++c) {
      nvcuda::wmma::store_matrix_sync(
          &s.c[row_block() * kWmmaSide][(first_column_block() + c) * kWmmaSide], acc[c],
          kTile + kFloatPad, nvcuda::wmma::mem_row_major);
    }
    __syncthreads();
    const int tx = threadIdx.x % kSide;
    const int ty = threadIdx.x / kSide;
    for_each_output([&](int i, int j) { return s.c[ty + kSide * i][tx + kSide * j]; }, store);
  }
};

// The engine of a dtype where both apply: float32 keeps the exact SIMT order, the 16-bit types
// take tensor cores.
template <typename T>
using TileEngine = std::conditional_t<std::is_same_v<T, float>, SimtEngine, WmmaEngine<T>>;

// Spike operands, expanded from their words to exact 0/1 values of the engine's type.
constexpr int kWordsPerTile = kTile / kBitsPerWord;

// a[row][k] = bit k of words[row]: one reduction step's 64 x 32 spike tile (the dense forwards).
template <typename Engine>
__device__ __forceinline__ void set_a_spike_bits(typename Engine::Operands& s, const uint32_t* words) {
  for (int e = threadIdx.x; e < kTile * kStep; e += kThreads) {
    const int row = e / kStep;
    const int k = e % kStep;
    Engine::set_a(s, row, k, static_cast<float>((words[row] >> k) & 1u));
  }
}

// b[k][column] = bit column % 32 of words[k][column / 32]: one reduction step's 32 x 64 spike tile
// (the weight gradients).
template <typename Engine>
__device__ __forceinline__ void set_b_spike_bits(typename Engine::Operands& s,
                                                 const uint32_t (*words)[kWordsPerTile]) {
  for (int e = threadIdx.x; e < kStep * kTile; e += kThreads) {
    const int k = e / kTile;
    const int column = e % kTile;
    Engine::set_b(s, k, column,
                  static_cast<float>((words[k][column / kBitsPerWord] >> (column % kBitsPerWord)) & 1u));
  }
}

// The forwards' epilogue: out [*, row_stride] gets the tile's value + bias at rows first_row + row
// (below rows) and columns first_column + column (column below columns, the tile's valid width),
// rounded once to T.
template <typename T, typename Engine, typename Operands>
__device__ void store_tile_with_bias(const Engine& engine, Operands& operands, T* out, const T* bias,
                                     int64_t first_row, int64_t rows, int64_t first_column,
                                     int64_t columns, int64_t row_stride) {
  engine.finish(operands, [&](int row, int column, float value) {
    const int64_t m = first_row + row;
    if (m < rows && column < columns) {
      const int64_t c = first_column + column;
      out[m * row_stride + c] = from_float<T>(bias != nullptr ? value + to_float(bias[c]) : value);
    }
  });
}

}  // namespace spikekern
