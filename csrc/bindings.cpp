// The spikekern._C extension module and the spikekern_cuda op schemas. Importing the module loads
// this library, whose static initializers register the schemas here and the CUDA implementations in
// neuron/neuron_ops.cpp with the dispatcher; the module itself has no Python-level contents.
#include <Python.h>

#include <torch/library.h>

#ifndef TORCH_EXTENSION_NAME
#error "TORCH_EXTENSION_NAME must name the extension module (setup.py and CMakeLists.txt define it)"
#endif

TORCH_LIBRARY(spikekern_cuda, m) {
  // Semantics and argument meanings: docs/neuron_ops.md ("Kernel contract").
  m.def(
      "neuron_forward(Tensor x_seq, Tensor? v_init, Tensor? decay, int neuron_kind, float tau, "
      "bool decay_input, float v_threshold, float v_reset, bool soft_reset, bool store_v_seq, "
      "int state_mode) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "neuron_backward(Tensor grad_spike, Tensor? grad_v_last, Tensor? grad_v_seq, Tensor state, "
      "Tensor? v_init, Tensor? decay, int neuron_kind, float tau, bool decay_input, "
      "float v_threshold, float v_reset, bool soft_reset, bool detach_reset, int surrogate, "
      "float alpha, int state_mode) -> (Tensor, Tensor, Tensor)");
}

#define SPIKEKERN_STRINGIFY_(name) #name
#define SPIKEKERN_STRINGIFY(name) SPIKEKERN_STRINGIFY_(name)
#define SPIKEKERN_CONCAT_(a, b) a##b
#define SPIKEKERN_CONCAT(a, b) SPIKEKERN_CONCAT_(a, b)

PyMODINIT_FUNC SPIKEKERN_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      SPIKEKERN_STRINGIFY(TORCH_EXTENSION_NAME),
      "spikekern CUDA kernels, registered as torch.ops.spikekern_cuda.*",
      -1,       // no per-module state
      nullptr,  // no methods
      nullptr,
      nullptr,
      nullptr,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
