// Explicit instantiation: every forward kernel for float inputs (see neuron_kernels.cuh).
#include "neuron/neuron_kernels.cuh"

namespace spikekern {

template void launch_neuron_forward_typed<float>(
    const NeuronForwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
