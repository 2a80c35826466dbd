// attnkit internal: argument checks shared by every family and backend.
// Each check throws attnkit::Error naming the function, the argument, what was
// expected and what was given.
#pragma once

#include <cstdint>
#include <string>

#include "attnkit/attnkit.hpp"
#include "problem.hpp"

namespace attnkit::check {

// dtype is float32 / float16 / bfloat16 (InvalidType otherwise).
void float_dtype(const char* fn, const char* name, const TensorView& t);
void same_dtype(const char* fn, const char* name, const TensorView& t, const char* ref_name,
                const TensorView& ref);
void same_device(const char* fn, const char* name, const TensorView& t, const char* ref_name,
                 const TensorView& ref);
// rank == expected; `layout` describes the expected axes, e.g. "[B, S, H, D]".
void rank(const char* fn, const char* name, const TensorView& t, int expected, const char* layout);
// innermost stride 1 (or innermost size <= 1).
void unit_inner_stride(const char* fn, const char* name, const TensorView& t);
// t.shape[axis] == expected; `what` names the axis ("batch", "head_dim"...).
void dim(const char* fn, const char* name, const TensorView& t, int axis, int64_t expected,
         const char* what);
// A non-empty tensor needs a data pointer.
void has_data(const char* fn, const char* name, const TensorView& t);
void positive(const char* fn, const char* what, int64_t value);
// The attention inputs of every family (ranks checked by the caller): q a float
// dtype, k and v of q's dtype and device, all with unit inner stride and data.
void qkv(const char* fn, const TensorView& q, const TensorView& k, const TensorView& v);
// A gradient buffer laid out like its reference (dq like q, dout like out...):
// ref's exact shape, dtype and device, unit inner stride, data.
void like(const char* fn, const char* name, const TensorView& t, const char* ref_name,
          const TensorView& ref);
// The backward's optional dlse: like(lse) and lse's strides too.
void dlse_like(const char* fn, const TensorView& dlse, const TensorView& lse);
// An output: given dtype, device of ref, exact shape, unit inner stride.
void output(const char* fn, const char* name, const TensorView& t, DType dtype,
            const TensorView& ref, std::initializer_list<int64_t> shape);

}  // namespace attnkit::check

namespace attnkit {

// Validates a forward call and resolves it into an FmhaProblem.
FmhaProblem make_fmha_problem(const char* fn, const TensorView& q, const TensorView& k,
                              const TensorView& v, const TensorView& out, const TensorView* lse,
                              const AttentionOptions& opts);

Operand operand_of(const TensorView& t, bool packed);

}  // namespace attnkit
