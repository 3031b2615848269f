// CUDA implementations of the spike_conv2d ops of spikekern_cuda (schemas in spike_bindings.cpp):
// check the arguments, lay the weight and grad_out out for the kernels, allocate the outputs,
// launch one kernel. The arguments are those of the Triton host functions
// (spikekern/ops/triton/spike_conv2d.py). Nothing here synchronises or reads device memory, so the
// ops can be captured in CUDA graphs. Kernel design: docs/spike_conv2d_cuda.md.
#include <array>
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

#include "common/multistep_ops.h"   // check_tensor, check_optional_tensor, multiprocessor_count
#include "spike/spike_conv2d.h"
#include "spike/spike_op_checks.h"  // check_element_type, current_stream
#include "spike/spike_ops.h"        // kBitsPerWord

namespace spikekern {
namespace {

constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxGridX = kMaxInt;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A CUDA tensor with `dims` dimensions (its sizes are checked against the geometry later).
void check_cuda_tensor(const at::Tensor& tensor, const char* name, int64_t dims,
                       const char* shape) {
  TORCH_CHECK(tensor.is_cuda(), name, " must be a CUDA tensor, got device ", tensor.device());
  TORCH_CHECK(tensor.dim() == dims, name, " must have shape ", shape, ", got ", tensor.sizes());
}

// A list of two ints (stride, padding, dilation, out_size, in_size), each at least `minimum` and
// an int32 (the kernels' spatial arithmetic).
void check_pair(at::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, name, " must have 2 elements, got ", values);
  TORCH_CHECK(values[0] >= minimum && values[1] >= minimum, name, " must be >= ", minimum,
              ", got ", values);
  TORCH_CHECK(values[0] <= kMaxInt && values[1] <= kMaxInt, name, " must be <= ", kMaxInt,
              ", got ", values);
}

// The geometry of a convolution of `weight` over [batch, C, height, width] input, the weight and
// the convolution's arguments checked; words_per_pixel = ceil(C / 32).
Conv2dGeometry make_geometry(const at::Tensor& weight, int64_t batch, int64_t height,
                             int64_t width, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups) {
  check_cuda_tensor(weight, "weight", 4, "[OC, C/groups, KH, KW]");
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK(groups >= 1, "groups must be >= 1, got ", groups);
  TORCH_CHECK(weight.size(0) % groups == 0, "weight's ", weight.size(0),
              " output channels must be divisible by groups = ", groups);
  TORCH_CHECK(weight.size(2) >= 1 && weight.size(3) >= 1,
              "weight's kernel must be at least 1x1, got shape ", weight.sizes());
  // Every spatial quantity below is at most the padded input's side, hence an int32.
  const int64_t padded_h = height + 2 * padding[0];
  const int64_t padded_w = width + 2 * padding[1];
  TORCH_CHECK(padded_h <= kMaxInt && padded_w <= kMaxInt && padded_h * padded_w <= kMaxInt,
              "the padded input (", padded_h, " x ", padded_w,
              ") must have fewer than 2**31 pixels");
  const int64_t span_h = dilation[0] * (weight.size(2) - 1) + 1;
  const int64_t span_w = dilation[1] * (weight.size(3) - 1) + 1;
  TORCH_CHECK(span_h <= padded_h && span_w <= padded_w, "the dilated kernel (", span_h, " x ",
              span_w, ") must fit in the padded input (", padded_h, " x ", padded_w, ")");
  Conv2dGeometry g{};
  g.batch = batch;
  g.channels = weight.size(1) * groups;
  g.out_channels = weight.size(0);
  g.groups = groups;
  g.channels_per_group = weight.size(1);
  g.outs_per_group = weight.size(0) / groups;
  g.words_per_pixel = ceil_div(g.channels, kBitsPerWord);
  g.height = static_cast<int>(height);
  g.width = static_cast<int>(width);
  g.out_height = static_cast<int>((padded_h - span_h) / stride[0] + 1);
  g.out_width = static_cast<int>((padded_w - span_w) / stride[1] + 1);
  g.kernel_h = static_cast<int>(weight.size(2));
  g.kernel_w = static_cast<int>(weight.size(3));
  g.stride_h = static_cast<int>(stride[0]);
  g.stride_w = static_cast<int>(stride[1]);
  g.pad_h = static_cast<int>(padding[0]);
  g.pad_w = static_cast<int>(padding[1]);
  g.dil_h = static_cast<int>(dilation[0]);
  g.dil_w = static_cast<int>(dilation[1]);
  g.element_type = check_element_type(weight.scalar_type(), "weight");
  return g;
}

// The geometry read from packed [N, H, W, ceil(C / 32)] int32 on the weight's device.
Conv2dGeometry packed_geometry(const at::Tensor& packed, const at::Tensor& weight,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  check_cuda_tensor(packed, "packed", 4, "[N, H, W, ceil(C/32)]");
  const Conv2dGeometry g = make_geometry(weight, packed.size(0), packed.size(1), packed.size(2),
                                         stride, padding, dilation, groups);
  check_tensor(packed, "packed", weight, at::kInt, {g.batch, g.height, g.width, g.words_per_pixel});
  return g;
}

// The blocks a kernel launches along one grid dimension must fit it.
void check_grid(int64_t blocks, int64_t limit, const char* what) {
  TORCH_CHECK(blocks <= limit, "the spike_conv2d CUDA kernels cannot launch ", blocks, " blocks ",
              what, " (at most ", limit, ")");
}

int64_t output_rows(const Conv2dGeometry& g) { return g.batch * g.out_height * g.out_width; }

// Blocks that tile each group's `per_group` channels `tile` at a time.
int64_t group_blocks(const Conv2dGeometry& g, int64_t per_group, int64_t tile) {
  return g.groups * ceil_div(per_group, tile);
}

// grad_out [N, OC, OH, OW] of the weight's dtype and device, as the kernels' [N*OH*OW, OC] rows
// (a channels-last grad_out, as the forward's output is, needs no copy).
at::Tensor grad_out_rows(const at::Tensor& grad_out, const Conv2dGeometry& g,
                         const at::Tensor& weight) {
  check_cuda_tensor(grad_out, "grad_out", 4, "[N, OC, OH, OW]");
  TORCH_CHECK(grad_out.device() == weight.device(), "grad_out must be on ", weight.device(),
              ", got ", grad_out.device());
  TORCH_CHECK(grad_out.scalar_type() == weight.scalar_type(), "grad_out must have dtype ",
              weight.scalar_type(), ", got ", grad_out.scalar_type());
  const std::array<int64_t, 4> sizes{g.batch, g.out_channels, g.out_height, g.out_width};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(sizes), "grad_out must have shape ",
              at::IntArrayRef(sizes), ", got ", grad_out.sizes());
  return grad_out.permute({0, 2, 3, 1}).contiguous();
}

std::tuple<at::Tensor, at::Tensor> spike_conv2d_pack_nchw_cuda(const at::Tensor& spikes,
                                                                bool validate) {
  check_cuda_tensor(spikes, "spikes", 4, "[N, C, H, W]");
  TORCH_CHECK(spikes.is_contiguous(), "spikes must be contiguous (NCHW)");
  const ElementType element_type = check_element_type(spikes.scalar_type(), "spikes");
  const c10::cuda::CUDAGuard device_guard(spikes.device());
  const auto int_options = spikes.options().dtype(at::kInt);
  at::Tensor packed = at::empty(
      {spikes.size(0), spikes.size(2), spikes.size(3), ceil_div(spikes.size(1), kBitsPerWord)},
      int_options);
  at::Tensor invalid = at::zeros({1}, int_options);
  if (packed.numel() == 0) return {packed, invalid};

  Conv2dPackArgs args{};
  args.batch = spikes.size(0);
  args.channels = spikes.size(1);
  args.pixels_per_image = spikes.size(2) * spikes.size(3);
  args.words_per_pixel = packed.size(3);
  args.element_type = element_type;
  args.spikes = spikes.const_data_ptr();
  args.packed = packed.mutable_data_ptr<int32_t>();
  args.invalid = validate ? invalid.mutable_data_ptr<int32_t>() : nullptr;
  launch_spike_conv2d_pack_nchw(args, multiprocessor_count(spikes), current_stream(spikes));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {packed, invalid};
}

using ForwardLauncher = void (*)(const Conv2dForwardArgs&, cudaStream_t);

// out [N, OC, OH, OW] in channels-last memory; `outs_per_block` output channels per grid.y block.
at::Tensor spike_conv2d_forward_cuda(const at::Tensor& packed, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias,
                                     at::IntArrayRef out_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups, int64_t outs_per_block, int64_t max_rows,
                                     ForwardLauncher launch) {
  const Conv2dGeometry g = packed_geometry(packed, weight, stride, padding, dilation, groups);
  check_pair(out_size, "out_size", 0);
  TORCH_CHECK(out_size[0] == g.out_height && out_size[1] == g.out_width, "out_size must be [",
              g.out_height, ", ", g.out_width, "] for this input and convolution, got ", out_size);
  check_grid(group_blocks(g, g.out_channels / groups, outs_per_block), kMaxConv2dGridY,
             "over the output channels");
  check_grid(output_rows(g), max_rows, "rows over the output pixels");
  const c10::cuda::CUDAGuard device_guard(weight.device());
  Conv2dForwardArgs args{};
  args.geometry = g;
  args.bias = check_optional_tensor(bias, "bias", weight, {g.out_channels});
  at::Tensor out = at::empty({g.batch, g.out_channels, g.out_height, g.out_width},
                             weight.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  // [KH, KW, C/groups, OC]: a tap's weight rows are contiguous along the output channels (one
  // small copy per call, as in the Triton host function).
  const at::Tensor weight_by_tap = weight.permute({2, 3, 1, 0}).contiguous();
  args.packed = packed.const_data_ptr<int32_t>();
  args.weight_by_tap = weight_by_tap.const_data_ptr();
  args.out = out.mutable_data_ptr();
  launch(args, current_stream(weight));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor spike_conv2d_dense_forward_cuda(const at::Tensor& packed, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias,
                                           at::IntArrayRef out_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           int64_t groups) {
  return spike_conv2d_forward_cuda(packed, weight, bias, out_size, stride, padding, dilation,
                                   groups, kConv2dTile, kMaxGridX * kConv2dTile,
                                   launch_spike_conv2d_dense_forward);
}

at::Tensor spike_conv2d_sparse_forward_cuda(const at::Tensor& packed, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias,
                                            at::IntArrayRef out_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation,
                                            int64_t groups) {
  return spike_conv2d_forward_cuda(packed, weight, bias, out_size, stride, padding, dilation,
                                   groups, kConv2dSparseOutputs, kMaxGridX,
                                   launch_spike_conv2d_sparse_forward);
}

// grad_weight [OC, C/groups, KH, KW], contiguous; zeros when there are no output pixels.
at::Tensor spike_conv2d_dense_grad_weight_cuda(const at::Tensor& grad_out, const at::Tensor& packed,
                                               const at::Tensor& weight, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation,
                                               int64_t groups) {
  const Conv2dGeometry g = packed_geometry(packed, weight, stride, padding, dilation, groups);
  check_grid(ceil_div(g.channels / groups, kConv2dTile), kMaxConv2dGridY,
             "over the input channels of a group");
  check_grid(g.kernel_h * g.kernel_w, kMaxConv2dGridY, "over the kernel taps");
  const c10::cuda::CUDAGuard device_guard(weight.device());
  const at::Tensor rows = grad_out_rows(grad_out, g, weight);
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options());
  if (grad_weight.numel() == 0) return grad_weight;

  Conv2dGradWeightArgs args{};
  args.geometry = g;
  args.grad_out = rows.const_data_ptr();
  args.packed = packed.const_data_ptr<int32_t>();
  args.grad_weight = grad_weight.mutable_data_ptr();
  launch_spike_conv2d_dense_grad_weight(args, current_stream(weight));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_weight;
}

// grad_input [N, C, H, W] in channels-last memory; zeros when the weight has no output channels.
at::Tensor spike_conv2d_grad_input_cuda(const at::Tensor& grad_out, const at::Tensor& weight,
                                        at::IntArrayRef in_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups) {
  check_cuda_tensor(grad_out, "grad_out", 4, "[N, OC, OH, OW]");
  check_pair(in_size, "in_size", 0);
  const Conv2dGeometry g = make_geometry(weight, grad_out.size(0), in_size[0], in_size[1], stride,
                                         padding, dilation, groups);
  check_grid(ceil_div(g.batch * g.height * g.width, kConv2dTile), kMaxGridX,
             "over the input pixels");
  check_grid(group_blocks(g, g.channels / groups, kConv2dTile), kMaxConv2dGridY,
             "over the input channels");
  const c10::cuda::CUDAGuard device_guard(weight.device());
  const at::Tensor rows = grad_out_rows(grad_out, g, weight);
  at::Tensor grad_input = at::empty({g.batch, g.channels, g.height, g.width},
                                    weight.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (grad_input.numel() == 0) return grad_input;

  // [KH, KW, OC, C/groups]: contiguous along the input channels, the grad_input tile's columns.
  const at::Tensor weight_t = weight.permute({2, 3, 0, 1}).contiguous();
  Conv2dGradInputArgs args{};
  args.geometry = g;
  args.grad_out = rows.const_data_ptr();
  args.weight_t = weight_t.const_data_ptr();
  args.grad_input = grad_input.mutable_data_ptr();
  launch_spike_conv2d_grad_input(args, current_stream(weight));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_input;
}

}  // namespace
}  // namespace spikekern

TORCH_LIBRARY_IMPL(spikekern_cuda, CUDA, m) {
  m.impl("spike_conv2d_pack_nchw", TORCH_FN(spikekern::spike_conv2d_pack_nchw_cuda));
  m.impl("spike_conv2d_dense_forward", TORCH_FN(spikekern::spike_conv2d_dense_forward_cuda));
  m.impl("spike_conv2d_sparse_forward", TORCH_FN(spikekern::spike_conv2d_sparse_forward_cuda));
  m.impl("spike_conv2d_dense_grad_weight",
         TORCH_FN(spikekern::spike_conv2d_dense_grad_weight_cuda));
  m.impl("spike_conv2d_grad_input", TORCH_FN(spikekern::spike_conv2d_grad_input_cuda));
}
