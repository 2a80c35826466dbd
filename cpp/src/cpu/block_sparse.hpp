// attnkit CPU backend: block-sparse attention entry points (block_sparse.cpp).
#pragma once

#include "../block_sparse_problem.hpp"

namespace attnkit::cpu {

void block_sparse_forward(const BlockSparseProblem& p, int threads);
void block_sparse_backward(const BlockSparseBackwardProblem& p, int threads);

}  // namespace attnkit::cpu
