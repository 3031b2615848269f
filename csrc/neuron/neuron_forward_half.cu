// Explicit instantiation: every forward kernel for half inputs (see neuron_kernels.cuh).
#include "neuron/neuron_kernels.cuh"

namespace spikekern {

template void launch_neuron_forward_typed<__half>(
    const NeuronForwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
