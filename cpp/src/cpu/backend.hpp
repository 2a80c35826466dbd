// attnkit CPU backend entry points (called by the host-side dispatcher).
#pragma once

#include "../problem.hpp"

namespace attnkit::cpu {

void fmha_forward(const FmhaProblem& p, int threads);
void fmha_backward(const FmhaBackwardProblem& p, int threads);

}  // namespace attnkit::cpu
