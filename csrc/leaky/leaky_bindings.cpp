// The spikekern_cuda::leaky_* op schemas, added to the library that csrc/bindings.cpp defines; the
// CUDA implementations are registered in leaky_ops.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(spikekern_cuda, m) {
  // Semantics and argument meanings: docs/leaky_op.md ("Kernel contract").
  m.def(
      "leaky_forward(Tensor x_seq, Tensor? mem_init, Tensor beta, Tensor threshold, "
      "int reset_mechanism, bool output_mem_seq, int state_mode) -> (Tensor, Tensor, Tensor)");
  m.def(
      "leaky_backward(Tensor grad_spike, Tensor? grad_mem, Tensor state, Tensor? mem_init, "
      "Tensor beta, Tensor threshold, int reset_mechanism, int surrogate, float alpha, "
      "bool output_mem_seq, int state_mode, bool beta_grad, bool threshold_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}
