// The scalar kernel set: the shared templates instantiated with this unit's Vec.
#define SK_ISA scalar
#include "vec_scalar.h"
#include "spmm_impl.h"

namespace sparsekit {
const KernelTable* scalar_table() {
  static const KernelTable table{Isa::Scalar, "scalar", &scalar::run, &scalar::stream_read};
  return &table;
}
}  // namespace sparsekit
