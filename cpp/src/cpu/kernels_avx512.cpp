// Compiles the micro-kernels for the "avx512" ISA; flags come from CMake.
#define AK_ISA_NAME "avx512"
#define AK_TABLE_FN kernel_table_avx512
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels.hpp"
namespace attnkit::cpu {
const KernelTable* kernel_table_avx512();
}
namespace attnkit::cpu::isa_avx512 {
#include "kernels_impl.hpp"
}
namespace attnkit::cpu {
const KernelTable* kernel_table_avx512() { return isa_avx512::kernel_table_avx512(); }
}
