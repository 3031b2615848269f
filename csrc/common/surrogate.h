// Surrogate-gradient ids, shared by every op's host interface (plain C++, no CUDA headers) and by
// surrogate.cuh. The ids are spikekern/ops/surrogate.py's; formulas in docs/neuron_ops.md.
#pragma once

namespace spikekern {

// Ids 0-6 are SpikingJelly's, 7 is snnTorch's, 8 is FSDDIM's triangle.
enum class Surrogate : int {
  kSigmoid = 0,
  kATan = 1,
  kPiecewiseQuadratic = 2,
  kPiecewiseExp = 3,
  kSoftSign = 4,
  kSuperSpike = 5,
  kErf = 6,
  kFastSigmoid = 7,
  kTriangle = 8,
};
constexpr int kNumSurrogates = 9;

}  // namespace spikekern
