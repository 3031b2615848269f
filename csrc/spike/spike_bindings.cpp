// The spikekern_cuda op schemas of the spike ops, added to the library that csrc/bindings.cpp
// defines; the CUDA implementations are registered in spike_ops.cpp. The argument names are those
// of the Triton host functions (spikekern/ops/triton/spike_pack.py, spike_linear.py), which the
// Python ops call with the same positional arguments; python_tests check that they agree.
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
}
