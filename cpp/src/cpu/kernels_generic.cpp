// Compiles the micro-kernels for the "generic" ISA; flags come from CMake.
#define AK_ISA_NAME "generic"
#define AK_TABLE_FN kernel_table_generic
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels.hpp"
namespace attnkit::cpu {
const KernelTable* kernel_table_generic();
}
namespace attnkit::cpu::isa_generic {
#include "kernels_impl.hpp"
}
namespace attnkit::cpu {
const KernelTable* kernel_table_generic() { return isa_generic::kernel_table_generic(); }
}
