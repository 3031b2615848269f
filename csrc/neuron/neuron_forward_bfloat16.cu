// Explicit instantiation: every forward kernel for bfloat16 inputs (see neuron_kernels.cuh).
#include "neuron/neuron_kernels.cuh"

namespace spikekern {

template void launch_neuron_forward_typed<__nv_bfloat16>(
    const NeuronForwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
