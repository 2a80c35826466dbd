// Compiles the micro-kernels for the "generic" ISA; flags come from CMake.
#define AK_ISA_NAME "generic"
#define AK_TABLE_FN kernel_table_generic
#include <cmath>
#include <cstdint>
#include <cstring>

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
