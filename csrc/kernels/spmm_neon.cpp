// The neon kernel set: the shared templates instantiated with this unit's Vec.
#define SK_ISA neon
#include "vec_neon.h"
#include "spmm_impl.h"

namespace sparsekit {
const KernelTable* neon_table() {
  static const KernelTable table{Isa::Neon, "neon", &neon::run, &neon::stream_read};
  return &table;
}
}  // namespace sparsekit
