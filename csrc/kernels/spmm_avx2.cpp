// The avx2 kernel set: the shared templates instantiated with this unit's Vec.
#define SK_ISA avx2
#include "vec_avx2.h"
#include "spmm_impl.h"

namespace sparsekit {
const KernelTable* avx2_table() {
  static const KernelTable table{Isa::Avx2, "avx2", &avx2::run, &avx2::stream_read};
  return &table;
}
}  // namespace sparsekit
