// The spikekern_cuda op schema of the fused inference blocks, added to the library that
// csrc/bindings.cpp defines; the CUDA implementation is registered in conv_bn_lif_ops.cpp. The
// argument names are those of the Triton host function (spikekern/ops/triton/conv_bn_lif.py), which
// the Python op calls with the same positional arguments; python_tests check that they agree.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(spikekern_cuda, m) {
  // Contract: spikekern/ops/conv_bn_lif.py and docs/conv_bn_lif.md. weight and bias have the
  // BatchNorm folded in; bias is float32; neuron_kind 0 IF, 1 LIF; v_reset is 0 for soft reset.
  m.def(
      "conv_bn_lif_inference(Tensor x_seq, Tensor weight, Tensor? bias, Tensor? v_init, "
      "int[] stride, int[] padding, int[] dilation, int groups, int neuron_kind, float tau, "
      "bool decay_input, float v_threshold, float v_reset, bool soft_reset) -> Tensor");
}
