// attnkit CPU backend: linear attention entry points (the chunked engine in linear.cpp).
#pragma once

#include "../linear_problem.hpp"

namespace attnkit::cpu {

void linear_forward(const LinearProblem& p, int threads);
void linear_backward(const LinearBackwardProblem& p, int threads);

}  // namespace attnkit::cpu
