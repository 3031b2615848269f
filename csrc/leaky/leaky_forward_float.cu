// Explicit instantiation: every forward kernel for float32 inputs (see leaky_kernels.cuh).
#include "leaky/leaky_kernels.cuh"

namespace spikekern {

template void launch_leaky_forward_typed<float>(
    const LeakyForwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
