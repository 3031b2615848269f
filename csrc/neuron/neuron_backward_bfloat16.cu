// Explicit instantiation: every backward kernel for bfloat16 inputs (see neuron_kernels.cuh).
#include "neuron/neuron_kernels.cuh"

namespace spikekern {

template void launch_neuron_backward_typed<__nv_bfloat16>(
    const NeuronBackwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
