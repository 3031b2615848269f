// Explicit instantiation: every backward kernel for float inputs (see neuron_kernels.cuh).
#include "neuron/neuron_kernels.cuh"

namespace spikekern {

template void launch_neuron_backward_typed<float>(
    const NeuronBackwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
