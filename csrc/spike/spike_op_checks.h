// Host-side helpers shared by the torch ops of the spike kernels (spike_ops.cpp,
// spike_conv2d_ops.cpp). Included by .cpp files only: it needs the torch headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "common/multistep.h"  // ElementType

namespace spikekern {

inline ElementType check_element_type(at::ScalarType dtype, const char* name) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", dtype);
  return dtype == at::kFloat  ? ElementType::kFloat32
         : dtype == at::kHalf ? ElementType::kFloat16
                              : ElementType::kBFloat16;
}

inline cudaStream_t current_stream(const at::Tensor& on_device) {
  return c10::cuda::getCurrentCUDAStream(on_device.get_device());
}

}  // namespace spikekern
