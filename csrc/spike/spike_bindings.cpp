// The spikekern_cuda op schemas of the spike ops, added to the library that csrc/bindings.cpp
// defines; the CUDA implementations are registered in spike_ops.cpp and spike_conv2d_ops.cpp. The
// argument names are those of the Triton host functions (spikekern/ops/triton/spike_pack.py,
// spike_linear.py, spike_conv2d.py), which the Python ops call with the same positional arguments;
// python_tests check that they agree.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(spikekern_cuda, m) {
  // Format, orders and argument meanings: docs/spike_ops.md. pack_spikes returns the words and a
  // one-element int32 flag, 1 if validate found a value other than 0 and 1.
  m.def("pack_spikes(Tensor spikes, bool validate) -> (Tensor, Tensor)");
  m.def("unpack_spikes(Tensor packed, int k_total, ScalarType dtype) -> Tensor");
  m.def(
      "spike_linear_dense_forward(Tensor packed, int k_total, Tensor weight, Tensor? bias) "
      "-> Tensor");
  m.def(
      "spike_linear_sparse_forward(Tensor packed, int k_total, Tensor weight, Tensor? bias) "
      "-> Tensor");
  m.def("spike_linear_dense_grad_weight(Tensor grad_out, Tensor packed, int k_total) -> Tensor");
  m.def("spike_linear_sparse_grad_weight(Tensor grad_out, Tensor packed, int k_total) -> Tensor");
  // spike_conv2d on channels-last packed spikes [N, H, W, ceil(C/32)] (docs/spike_conv2d.md; CUDA
  // kernels: docs/spike_conv2d_cuda.md, orders in spike_conv2d.h). The arguments are those of
  // spikekern/ops/triton/spike_conv2d.py's host functions; out_size is (OH, OW), in_size (H, W).
  m.def("spike_conv2d_pack_nchw(Tensor spikes, bool validate) -> (Tensor, Tensor)");
  m.def(
      "spike_conv2d_dense_forward(Tensor packed, Tensor weight, Tensor? bias, int[] out_size, "
      "int[] stride, int[] padding, int[] dilation, int groups) -> Tensor");
  m.def(
      "spike_conv2d_sparse_forward(Tensor packed, Tensor weight, Tensor? bias, int[] out_size, "
      "int[] stride, int[] padding, int[] dilation, int groups) -> Tensor");
  m.def(
      "spike_conv2d_dense_grad_weight(Tensor grad_out, Tensor packed, Tensor weight, int[] stride, "
      "int[] padding, int[] dilation, int groups) -> Tensor");
  m.def(
      "spike_conv2d_grad_input(Tensor grad_out, Tensor weight, int[] in_size, int[] stride, "
      "int[] padding, int[] dilation, int groups) -> Tensor");
}
