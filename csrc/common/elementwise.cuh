// Register-level loads and stores for elementwise kernels: values live in float32 registers
// whatever the storage type (float32, float16, bfloat16), and a thread moves N consecutive elements
// as one aligned access of up to kPackBytes.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace spikekern {

// The widest single load/store instruction (128-bit).
constexpr int kPackBytes = 16;

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) { return value; }
template <>
__device__ __forceinline__ __half from_float<__half>(float value) { return __float2half_rn(value); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}

// N consecutive elements moved as one aligned access (up to 128-bit; two for 8 float32 elements).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T elements[N];
};

template <int N, typename T>
__device__ __forceinline__ void load_pack(const T* source, float (&values)[N]) {
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(source);
#pragma unroll
  for (int i = 0; i < N; ++i) values[i] = to_float(pack.elements[i]);
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* destination, const float (&values)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int i = 0; i < N; ++i) pack.elements[i] = from_float<T>(values[i]);
  *reinterpret_cast<Pack<T, N>*>(destination) = pack;
}

template <int N>
__device__ __forceinline__ void fill(float (&values)[N], float value) {
#pragma unroll
  for (int i = 0; i < N; ++i) values[i] = value;
}

template <int N>
__device__ __forceinline__ void copy(float (&destination)[N], const float (&source)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) destination[i] = source[i];
}

// Grid-stride loop over work items (64-bit: the items may number more than 2^31):
//   for (int64_t i = first_item(); i < n; i += item_stride()) ...
__device__ __forceinline__ int64_t first_item() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t item_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace spikekern
