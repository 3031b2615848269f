// Explicit instantiation: every forward kernel for bfloat16 inputs (see leaky_kernels.cuh).
#include "leaky/leaky_kernels.cuh"

namespace spikekern {

template void launch_leaky_forward_typed<__nv_bfloat16>(
    const LeakyForwardArgs&, const LaunchPlan&, cudaStream_t);

}  // namespace spikekern
