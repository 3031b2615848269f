// The surrogate derivatives g(x) of the Heaviside spike, in float32, for every op's backward.
#pragma once

#include "common/surrogate.h"

namespace spikekern {

// g(x) with x = H - v_threshold. The id is a runtime argument uniform across the grid, so the
// switch does not diverge; templating on it would multiply the backward instantiations for no gain
// in a memory-bound kernel.
__device__ __forceinline__ float surrogate_grad(Surrogate surrogate, float alpha, float x) {
  constexpr float kHalfPi = 1.57079632679489661923f;
  constexpr float kInvSqrtPi = 0.56418958354775628695f;
  switch (surrogate) {
    case Surrogate::kSigmoid: {
      const float s = 1.0f / (1.0f + expf(-alpha * x));
      return (1.0f - s) * s * alpha;
    }
    case Surrogate::kATan: {
      const float z = x * (kHalfPi * alpha);
      return (alpha * 0.5f) / (1.0f + z * z);
    }
    case Surrogate::kPiecewiseQuadratic: {
      const float g = alpha - alpha * alpha * fabsf(x);
      return g < 0.0f ? 0.0f : g;  // not fmaxf: a NaN must propagate, as in the reference
    }
    case Surrogate::kPiecewiseExp:
      return (alpha * 0.5f) * expf(-alpha * fabsf(x));
    case Surrogate::kSoftSign: {
      const float z = 1.0f / alpha + fabsf(x);
      return 1.0f / (2.0f * alpha * z * z);
    }
    case Surrogate::kSuperSpike: {
      const float z = 1.0f + fabsf(x);
      return alpha / (z * z);
    }
    case Surrogate::kErf: {
      const float z = alpha * x;
      return (alpha * kInvSqrtPi) * expf(-z * z);
    }
    case Surrogate::kFastSigmoid: {
      const float z = alpha * fabsf(x) + 1.0f;
      return 1.0f / (z * z);
    }
    default: {  // Surrogate::kTriangle (the ops validate the id)
      const float g = 1.0f - alpha * fabsf(x);
      return g < 0.0f ? 0.0f : g;  // not fmaxf: a NaN must propagate, as in the reference
    }
  }
}

}  // namespace spikekern
