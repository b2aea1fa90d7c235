// The avx512 kernel set: the shared templates instantiated with this unit's Vec.
#define SK_ISA avx512
#include "vec_avx512.h"
#include "spmm_impl.h"

namespace sparsekit {
const KernelTable* avx512_table() {
  static const KernelTable table{Isa::Avx512, "avx512", &avx512::run, &avx512::stream_read};
  return &table;
}
}  // namespace sparsekit
