// attnkit CUDA backend: kernel selection and the checks of what the kernels cover.
#include "registry.hpp"

#include <algorithm>
#include <cstdint>
#include <set>

#include "attnkit/error.hpp"

namespace attnkit::cuda {

namespace {

const char* short_dtype(DType t) {
  switch (t) {
    case DType::Float16: return "fp16";
    case DType::BFloat16: return "bf16";
    case DType::Float32: return "fp32";
    default: return dtype_name(t);
  }
}

const char* dir_name(Direction d) { return d == Direction::Forward ? "fwd" : "bwd"; }

// "bf16 hd{64,128}, fp16 hd{64,128}" for the entries of one (arch, dir).
std::string summary(const KernelTable& t, int arch, Direction dir) {
  std::string out;
  for (DType dt : {DType::BFloat16, DType::Float16}) {
    std::set<int> dims;
    for (int i = 0; i < t.size; ++i)
      if (t.entries[i].arch == arch && t.entries[i].dir == dir && t.entries[i].dtype == dt)
        dims.insert(t.entries[i].head_dim);
    if (dims.empty()) continue;
    if (!out.empty()) out += ", ";
    out += std::string(short_dtype(dt)) + " head_dim {";
    bool first = true;
    for (int d : dims) {
      out += (first ? "" : ", ") + std::to_string(d);
      first = false;
    }
    out += "}";
  }
  return out.empty() ? "none" : out;
}

std::string all_summary(const KernelTable& t) {
  std::set<std::pair<int, int>> keys;  // (arch, dir)
  for (int i = 0; i < t.size; ++i) keys.insert({t.entries[i].arch, int(t.entries[i].dir)});
  std::string out;
  for (auto [arch, dir] : keys) {
    if (!out.empty()) out += "; ";
    out += "sm" + std::to_string(arch) + " " + dir_name(Direction(dir)) + ": " +
           summary(t, arch, Direction(dir));
  }
  return out.empty() ? "no kernels" : out;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void check_operand(const char* fn, const char* name, const Operand& o, DType dt, bool varlen) {
  const int64_t es = dtype_size(dt);
  AK_CHECK(aligned16(o.data), Unsupported, fn, ": ", name,
           " must start at a 16-byte aligned address for the CUDA kernels (TMA); "
           "pass a freshly allocated or .contiguous() tensor");
  const bool ok = (o.token_stride * es) % 16 == 0 && (o.head_stride * es) % 16 == 0 &&
                  (varlen || (o.batch_stride * es) % 16 == 0);
  AK_CHECK(ok, Unsupported, fn, ": ", name,
           " strides must be multiples of 16 bytes for the CUDA kernels (TMA), got (batch, token, head) "
           "strides (", o.batch_stride, ", ", o.token_stride, ", ", o.head_stride,
           ") elements of ", es, " bytes; make it contiguous first");
}

}  // namespace

std::string kernel_name(const KernelEntry& e) {
  std::string s = "sm" + std::to_string(e.arch) + " " + dir_name(e.dir) + " " + short_dtype(e.dtype) +
                  " hd" + std::to_string(e.head_dim);
  if (e.variant && *e.variant) s += std::string(" (") + e.variant + ")";
  return s;
}

std::vector<std::string> kernel_names(const KernelTable& t) {
  std::vector<std::string> v;
  for (int i = 0; i < t.size; ++i) v.push_back(kernel_name(t.entries[i]));
  return v;
}

int arch_of_compute_capability(int major, int minor) {
  if (major == 9 && minor == 0) return 90;
  if (major == 10 && minor == 0) return 100;
  return 0;
}

const KernelEntry& find_kernel(const KernelTable& t, const char* fn, int cc_major, int cc_minor,
                               Direction dir, DType dtype, int head_dim, const char* variant) {
  const int arch = arch_of_compute_capability(cc_major, cc_minor);
  const std::string asked = std::string(short_dtype(dtype)) + " head_dim " +
                            std::to_string(head_dim) + " " + dir_name(dir);
  AK_CHECK(arch != 0, Unsupported, fn, ": attnkit has no CUDA kernels for compute capability ",
           cc_major, ".", cc_minor, " (", asked, "); its kernels target sm_90a (H100/H200) and "
           "sm_100a (B200/GB200). This build has: ", all_summary(t),
           ". Pass CPU tensors to use the CPU backend");
  bool arch_built = false;
  const KernelEntry* first = nullptr;
  for (int i = 0; i < t.size; ++i) {
    const KernelEntry& e = t.entries[i];
    if (e.arch != arch) continue;
    arch_built = true;
    if (e.dir != dir || e.dtype != dtype || e.head_dim != head_dim) continue;
    if (variant == nullptr || !*variant) return e;
    if (e.variant && std::string(e.variant) == variant) return e;
    if (!first) first = &e;
  }
  if (first) return *first;
  AK_CHECK(arch_built, Unsupported, fn, ": this attnkit build has no kernels for sm_", arch,
           "a (the GPU's compute capability ", cc_major, ".", cc_minor, "); built archs: '", t.archs,
           "'. Rebuild with ATTNKIT_CUDA_ARCHS including ", arch, "a. This build has: ",
           all_summary(t));
  throw Error(ErrorCode::Unsupported,
              std::string(fn) + ": no CUDA kernel for " + asked + " on sm" + std::to_string(arch) +
                  "; supported " + dir_name(dir) + " on sm" + std::to_string(arch) + ": " +
                  summary(t, arch, dir) + " (all: " + all_summary(t) +
                  "). Use another head_dim or dtype, or CPU tensors");
}

void check_supported(const char* fn, const FmhaProblem& p) {
  AK_CHECK(p.dtype == DType::Float16 || p.dtype == DType::BFloat16, Unsupported, fn,
           ": the CUDA kernels take float16 or bfloat16, got ", dtype_name(p.dtype),
           "; cast to a half type or use CPU tensors");
  AK_CHECK(p.head_dim_qk == p.head_dim_v, Unsupported, fn,
           ": the CUDA kernels need the value head_dim to equal the query/key head_dim, got ",
           p.head_dim_qk, " and ", p.head_dim_v);
  AK_CHECK(p.softcap == 0.f, Unsupported, fn,
           ": softcap is not supported by the CUDA kernels yet (CPU tensors support it)");
  const int64_t lim = int64_t(1) << 31;
  AK_CHECK(p.seqlen_q < lim && p.seqlen_k < lim && p.total_q < lim && p.total_k < lim &&
               p.batch < (int64_t(1) << 16) && p.heads_q < (int64_t(1) << 16),
           Unsupported, fn, ": sizes exceed the CUDA kernels' limits (tokens < 2^31, batch and heads < 65536)");
  check_operand(fn, "q", p.q, p.dtype, p.varlen());
  check_operand(fn, "k", p.k, p.dtype, p.varlen());
  check_operand(fn, "v", p.v, p.dtype, p.varlen());
  // out is written with 4-byte stores: its rows need only 4-byte alignment.
  const int64_t es = dtype_size(p.dtype);
  AK_CHECK((reinterpret_cast<uintptr_t>(p.out.data) & 3u) == 0 && (p.out.token_stride * es) % 4 == 0 &&
               (p.out.head_stride * es) % 4 == 0 && (p.out.batch_stride * es) % 4 == 0,
           Unsupported, fn, ": out must be 4-byte aligned with even strides for the CUDA kernels");
}

void check_supported(const char* fn, const FmhaBackwardProblem& p) {
  check_supported(fn, p.fwd);
  const int64_t es = dtype_size(p.fwd.dtype);
  check_operand(fn, "dout", p.dout, p.fwd.dtype, p.fwd.varlen());
  check_operand(fn, "out", p.fwd.out, p.fwd.dtype, p.fwd.varlen());
  for (auto [name, o] : {std::pair<const char*, const Operand*>{"dq", &p.dq}, {"dk", &p.dk}, {"dv", &p.dv}}) {
    AK_CHECK((reinterpret_cast<uintptr_t>(o->data) & 3u) == 0 && (o->token_stride * es) % 4 == 0 &&
                 (o->head_stride * es) % 4 == 0 && (o->batch_stride * es) % 4 == 0,
             Unsupported, fn, ": ", name, " must be 4-byte aligned with even strides for the CUDA kernels");
  }
}

}  // namespace attnkit::cuda
