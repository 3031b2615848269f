// Explicit instantiation: every forward kernel for float16 inputs (see leaky_kernels.cuh).
#include "leaky/leaky_kernels.cuh"

namespace spikekern {

template void launch_leaky_forward_typed<__half>(
    const LeakyForwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
