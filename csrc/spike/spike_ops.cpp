// CUDA implementations of the spikekern_cuda spike ops (schemas in spike_bindings.cpp): check the
// arguments, allocate the outputs, launch one kernel. The Python ops (spikekern/ops/spike_pack.py,
// spike_linear.py) pass contiguous tensors and skip empty problems; these checks catch misuse.
// Nothing here synchronises or reads device memory, so the ops can be captured in CUDA graphs.
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/multistep_ops.h"  // check_tensor, multiprocessor_count
#include "spike/spike_op_checks.h"  // check_element_type, current_stream
#include "spike/spike_ops.h"

namespace spikekern {
namespace {

// A contiguous 2-d CUDA tensor: the one that fixes the device for the op's other tensors.
void check_leading_matrix(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.is_cuda(), name, " must be a CUDA tensor, got device ", tensor.device());
  TORCH_CHECK(tensor.dim() == 2, name, " must be 2-d, got shape ", tensor.sizes());
  TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
}

int64_t words_per_row(int64_t k_total) { return (k_total + kBitsPerWord - 1) / kBitsPerWord; }

// packed [rows, ceil(k_total / 32)] int32 on the device of `like`.
void check_packed(const at::Tensor& packed, int64_t k_total, int64_t rows, const at::Tensor& like) {
  TORCH_CHECK(k_total >= 0, "k_total must be >= 0, got ", k_total);
  check_tensor(packed, "packed", like, at::kInt, {rows, words_per_row(k_total)});
}

std::tuple<at::Tensor, at::Tensor> pack_spikes_cuda(const at::Tensor& spikes, bool validate) {
  check_leading_matrix(spikes, "spikes");
  const ElementType element_type = check_element_type(spikes.scalar_type(), "spikes");
  const c10::cuda::CUDAGuard device_guard(spikes.device());
  const int64_t rows = spikes.size(0);
  const int64_t k_total = spikes.size(1);
  const auto int_options = spikes.options().dtype(at::kInt);
  at::Tensor packed = at::empty({rows, words_per_row(k_total)}, int_options);
  at::Tensor invalid = at::zeros({1}, int_options);
  if (packed.numel() == 0) return {packed, invalid};

  PackArgs args{};
  args.rows = rows;
  args.k_total = k_total;
  args.words_per_row = packed.size(1);
  args.element_type = element_type;
  args.spikes = spikes.const_data_ptr();
  args.packed = packed.mutable_data_ptr<int32_t>();
  args.invalid = validate ? invalid.mutable_data_ptr<int32_t>() : nullptr;
  launch_pack_spikes(args, multiprocessor_count(spikes), current_stream(spikes));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {packed, invalid};
}

at::Tensor unpack_spikes_cuda(const at::Tensor& packed, int64_t k_total, at::ScalarType dtype) {
  check_leading_matrix(packed, "packed");
  check_packed(packed, k_total, packed.size(0), packed);
  const ElementType element_type = check_element_type(dtype, "dtype");
  const c10::cuda::CUDAGuard device_guard(packed.device());
  at::Tensor spikes = at::empty({packed.size(0), k_total}, packed.options().dtype(dtype));
  if (spikes.numel() == 0) return spikes;

  UnpackArgs args{};
  args.rows = packed.size(0);
  args.k_total = k_total;
  args.words_per_row = packed.size(1);
  args.element_type = element_type;
  args.packed = packed.const_data_ptr<int32_t>();
  args.spikes = spikes.mutable_data_ptr();
  launch_unpack_spikes(args, multiprocessor_count(packed), current_stream(packed));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return spikes;
}

void check_out_features(int64_t out_features) {
  TORCH_CHECK(out_features <= kMaxSpikeLinearOutFeatures,
              "the spike_linear CUDA kernels take at most ", kMaxSpikeLinearOutFeatures,
              " output features, got ", out_features);
}

// weight [N, K] and bias [N] of one float dtype; the forward's args, with `out` allocated.
SpikeLinearForwardArgs forward_args(const at::Tensor& packed, int64_t k_total,
                                    const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const int64_t out_features = weight.size(0);
  SpikeLinearForwardArgs args{};
  args.rows = packed.size(0);
  args.in_features = k_total;
  args.out_features = out_features;
  args.words_per_row = packed.size(1);
  args.element_type = check_element_type(weight.scalar_type(), "weight");
  args.packed = packed.const_data_ptr<int32_t>();
  args.weight = weight.const_data_ptr();
  args.bias = check_optional_tensor(bias, "bias", weight, {out_features});
  out = at::empty({args.rows, out_features}, weight.options());
  args.out = out.mutable_data_ptr();
  return args;
}

void check_forward(const at::Tensor& packed, int64_t k_total, const at::Tensor& weight) {
  check_leading_matrix(weight, "weight");
  TORCH_CHECK(weight.size(1) == k_total, "weight must have k_total = ", k_total,
              " columns, got shape ", weight.sizes());
  TORCH_CHECK(packed.dim() == 2, "packed must be 2-d, got shape ", packed.sizes());
  check_packed(packed, k_total, packed.size(0), weight);
  check_out_features(weight.size(0));
}

at::Tensor spike_linear_dense_forward_cuda(const at::Tensor& packed, int64_t k_total,
                                           const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias) {
  check_forward(packed, k_total, weight);
  const c10::cuda::CUDAGuard device_guard(weight.device());
  at::Tensor out;
  const SpikeLinearForwardArgs args = forward_args(packed, k_total, weight, bias, out);
  if (out.numel() == 0) return out;
  launch_spike_linear_dense_forward(args, current_stream(weight));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor spike_linear_sparse_forward_cuda(const at::Tensor& packed, int64_t k_total,
                                            const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias) {
  check_forward(packed, k_total, weight);
  TORCH_CHECK(packed.size(0) <= std::numeric_limits<int32_t>::max(),
              "the sparse spike_linear CUDA kernel takes at most 2**31 - 1 rows, got ",
              packed.size(0));
  const c10::cuda::CUDAGuard device_guard(weight.device());
  // The kernel gathers whole weight columns: transposed, they are contiguous rows (one copy per
  // call, as in the Triton sparse path).
  const at::Tensor weight_t = weight.t().contiguous();
  at::Tensor out;
  SpikeLinearForwardArgs args = forward_args(packed, k_total, weight, bias, out);
  args.weight = weight_t.const_data_ptr();
  if (out.numel() == 0) return out;
  launch_spike_linear_sparse_forward(args, current_stream(weight));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// grad_weight [N, K] of grad_out's dtype; zeros when there are no rows.
using GradWeightLauncher = void (*)(const SpikeLinearGradWeightArgs&, cudaStream_t);

at::Tensor spike_linear_grad_weight_cuda(const at::Tensor& grad_out, const at::Tensor& packed,
                                         int64_t k_total, GradWeightLauncher launch) {
  check_leading_matrix(grad_out, "grad_out");
  const ElementType element_type = check_element_type(grad_out.scalar_type(), "grad_out");
  check_packed(packed, k_total, grad_out.size(0), grad_out);
  check_out_features(grad_out.size(1));
  TORCH_CHECK(words_per_row(k_total) <= std::numeric_limits<int32_t>::max(),
              "k_total is too large for the spike_linear CUDA kernels: ", k_total);
  const c10::cuda::CUDAGuard device_guard(grad_out.device());
  at::Tensor grad_weight = at::empty({grad_out.size(1), k_total}, grad_out.options());
  if (grad_weight.numel() == 0) return grad_weight;

  SpikeLinearGradWeightArgs args{};
  args.rows = grad_out.size(0);
  args.in_features = k_total;
  args.out_features = grad_out.size(1);
  args.words_per_row = packed.size(1);
  args.element_type = element_type;
  args.grad_out = grad_out.const_data_ptr();
  args.packed = packed.const_data_ptr<int32_t>();
  args.grad_weight = grad_weight.mutable_data_ptr();
  launch(args, current_stream(grad_out));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_weight;
}

at::Tensor spike_linear_dense_grad_weight_cuda(const at::Tensor& grad_out, const at::Tensor& packed,
                                               int64_t k_total) {
  return spike_linear_grad_weight_cuda(grad_out, packed, k_total,
                                       launch_spike_linear_dense_grad_weight);
}

at::Tensor spike_linear_sparse_grad_weight_cuda(const at::Tensor& grad_out,
                                                const at::Tensor& packed, int64_t k_total) {
  return spike_linear_grad_weight_cuda(grad_out, packed, k_total,
                                       launch_spike_linear_sparse_grad_weight);
}

}  // namespace
}  // namespace spikekern

TORCH_LIBRARY_IMPL(spikekern_cuda, CUDA, m) {
  m.impl("pack_spikes", TORCH_FN(spikekern::pack_spikes_cuda));
  m.impl("unpack_spikes", TORCH_FN(spikekern::unpack_spikes_cuda));
  m.impl("spike_linear_dense_forward", TORCH_FN(spikekern::spike_linear_dense_forward_cuda));
  m.impl("spike_linear_sparse_forward", TORCH_FN(spikekern::spike_linear_sparse_forward_cuda));
  m.impl("spike_linear_dense_grad_weight",
         TORCH_FN(spikekern::spike_linear_dense_grad_weight_cuda));
  m.impl("spike_linear_sparse_grad_weight",
         TORCH_FN(spikekern::spike_linear_sparse_grad_weight_cuda));
}
