// Explicit instantiation: every backward kernel for float16 inputs (see leaky_kernels.cuh).
#include "leaky/leaky_kernels.cuh"

namespace spikekern {

template void launch_leaky_backward_typed<__half>(
    const LeakyBackwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
