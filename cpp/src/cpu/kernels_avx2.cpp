// Compiles the micro-kernels for the "avx2" ISA; flags come from CMake.
#define AK_ISA_NAME "avx2"
#define AK_TABLE_FN kernel_table_avx2
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels.hpp"
namespace attnkit::cpu {
const KernelTable* kernel_table_avx2();
}
namespace attnkit::cpu::isa_avx2 {
#include "kernels_impl.hpp"
}
namespace attnkit::cpu {
const KernelTable* kernel_table_avx2() { return isa_avx2::kernel_table_avx2(); }
}
