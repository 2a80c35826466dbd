// attnkit CPU backend: neighborhood attention entry points (called by gna_api.cpp).
#pragma once

#include "../gna_problem.hpp"

namespace attnkit::cpu {

void na_forward(const NaProblem& p, int threads);
void na_backward(const NaBackwardProblem& p, int threads);

}  // namespace attnkit::cpu
