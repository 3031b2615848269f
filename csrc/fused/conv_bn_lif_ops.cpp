// CUDA implementation of spikekern_cuda::conv_bn_lif_inference (schema in fused_bindings.cpp):
// check the arguments, allocate the spikes, launch one kernel. The Python op
// (spikekern/ops/conv_bn_lif.py) folds the BatchNorm, passes contiguous tensors and skips empty
// problems; these checks catch misuse. Nothing here synchronises or reads device memory.
#include <cstdint>
#include <limits>
#include <optional>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/multistep_ops.h"  // check_sequence, check_tensor, check_optional_tensor
#include "fused/conv_bn_lif_ops.h"

namespace spikekern {
namespace {

// Two values, each at least `minimum` (stride, padding, dilation).
void check_pair(at::IntArrayRef pair, const char* name, int64_t minimum) {
  TORCH_CHECK(pair.size() == 2, name, " must have two values, got ", pair);
  TORCH_CHECK(pair[0] >= minimum && pair[1] >= minimum, name, " must be at least ", minimum,
              ", got ", pair);
}

int64_t output_length(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dil) {
  return (size + 2 * pad - dil * (kernel - 1) - 1) / stride + 1;
}

at::Tensor conv_bn_lif_inference_cuda(const at::Tensor& x_seq, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias,
                                      const std::optional<at::Tensor>& v_init,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups,
                                      int64_t neuron_kind, double tau, bool decay_input,
                                      double v_threshold, double v_reset, bool soft_reset) {
  TORCH_CHECK(x_seq.dim() == 5, "x_seq must have shape [T, N, C, H, W], got ", x_seq.sizes());
  TORCH_CHECK(x_seq.is_contiguous(), "x_seq must be contiguous");
  // The [T, N*C*H*W] view fixes device and dtype for the other tensors.
  const ElementType element_type = check_sequence(x_seq.flatten(1), "x_seq");
  TORCH_CHECK(groups >= 1, "groups must be >= 1, got ", groups);
  TORCH_CHECK(weight.dim() == 4, "weight must have shape [OC, C / groups, KH, KW], got ",
              weight.sizes());
  const int64_t out_channels = weight.size(0);
  TORCH_CHECK(x_seq.size(2) % groups == 0 && weight.size(1) * groups == x_seq.size(2) &&
                  out_channels % groups == 0,
              "weight must have shape [OC (a multiple of groups), C / groups, KH, KW] for x_seq of "
              "shape ", x_seq.sizes(), " and groups = ", groups, ", got ", weight.sizes());
  check_tensor(weight, "weight", x_seq, x_seq.scalar_type(), weight.sizes());
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK(neuron_kind == static_cast<int64_t>(NeuronKind::kIF) ||
                  neuron_kind == static_cast<int64_t>(NeuronKind::kLIF),
              "neuron_kind must be 0 (IF) or 1 (LIF), got ", neuron_kind);

  ConvBnLifArgs args{};
  args.batch = x_seq.size(1);
  args.in_channels = x_seq.size(2);
  args.height = x_seq.size(3);
  args.width = x_seq.size(4);
  args.out_channels = out_channels;
  args.kernel_h = weight.size(2);
  args.kernel_w = weight.size(3);
  args.stride_h = stride[0];
  args.stride_w = stride[1];
  args.pad_h = padding[0];
  args.pad_w = padding[1];
  args.dil_h = dilation[0];
  args.dil_w = dilation[1];
  args.groups = groups;
  args.out_height = output_length(args.height, args.kernel_h, args.stride_h, args.pad_h, args.dil_h);
  args.out_width = output_length(args.width, args.kernel_w, args.stride_w, args.pad_w, args.dil_w);
  TORCH_CHECK(args.out_height >= 1 && args.out_width >= 1, "the kernel ", weight.sizes().slice(2),
              " does not fit the input ", x_seq.sizes().slice(3), " with padding ", padding,
              " and dilation ", dilation);
  const int64_t num_steps = x_seq.size(0);
  const int64_t pixel_blocks =
      (args.batch * args.out_height * args.out_width + kConvBnLifTile - 1) / kConvBnLifTile;
  const int64_t channel_blocks =
      groups * ((out_channels / groups + kConvBnLifTile - 1) / kConvBnLifTile);
  TORCH_CHECK(pixel_blocks <= std::numeric_limits<int32_t>::max() && channel_blocks <= kMaxGridY,
              "conv_bn_lif_inference's CUDA kernel cannot take this many output pixels or groups "
              "of output channels: x_seq ", x_seq.sizes(), ", weight ", weight.sizes());

  const c10::cuda::CUDAGuard device_guard(x_seq.device());
  at::Tensor spike_seq = at::empty(
      {num_steps, args.batch, out_channels, args.out_height, args.out_width}, x_seq.options());
  const at::IntArrayRef out_sizes = spike_seq.sizes().slice(1);
  args.x_seq = x_seq.const_data_ptr();
  args.weight = weight.const_data_ptr();
  if (bias.has_value()) {
    check_tensor(*bias, "bias", x_seq, at::kFloat, {out_channels});
    args.bias = bias->const_data_ptr<float>();
  }
  args.v_init = check_optional_tensor(v_init, "v_init", x_seq, out_sizes);
  args.spike_seq = spike_seq.mutable_data_ptr();

  NeuronConfig& neuron = args.neuron;
  neuron.num_steps = num_steps;
  neuron.element_type = element_type;
  neuron.kind = static_cast<NeuronKind>(neuron_kind);
  neuron.decay_input = decay_input;
  neuron.soft_reset = soft_reset;
  neuron.tau = static_cast<float>(tau);
  neuron.v_threshold = static_cast<float>(v_threshold);
  neuron.v_reset = static_cast<float>(v_reset);
  if (spike_seq.numel() == 0) return spike_seq;
  launch_conv_bn_lif_inference(args, c10::cuda::getCurrentCUDAStream(x_seq.get_device()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return spike_seq;
}

}  // namespace
}  // namespace spikekern

TORCH_LIBRARY_IMPL(spikekern_cuda, CUDA, m) {
  m.impl("conv_bn_lif_inference", TORCH_FN(spikekern::conv_bn_lif_inference_cuda));
}
