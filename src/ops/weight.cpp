#include "ops/weight.h"

#include "ops/ggml_blocks.h"
#include "ops/quant.h"
#include "util/error.h"

namespace megamoe {

int64_t WeightView::bytes() const {
  int64_t scale_bytes = 0;
  if (dtype == DType::F8_E4M3) scale_bytes = scale_rows() * scale_cols() * int64_t(sizeof(float));
  else if (dtype == DType::F4_E2M1) scale_bytes = rows * (cols / kQuantBlock);
  return rows * row_bytes() + scale_bytes;
}

WeightView WeightView::row_slice(int64_t first, int64_t count) const {
  if (first < 0 || count < 0 || first + count > rows)
    fail("rows [{}, {}) are outside a {} weight of {} rows", first, first + count, dtype_name(dtype), rows);
  WeightView slice = *this;
  slice.rows = count;
  slice.data = static_cast<const std::byte*>(data) + first * row_bytes();
  if (dtype == DType::F8_E4M3) {
    // Scales cover B-row blocks: the slice starts at the block of its first row, as far into it.
    const int64_t block_row = scale_row_offset + first;
    slice.scale_inv = scale_inv + block_row / scale_block * scale_cols();
    slice.scale_row_offset = block_row % scale_block;
  } else if (dtype == DType::F4_E2M1) {
    slice.scale_e8m0 = scale_e8m0 + first * (cols / kQuantBlock);
  }
  return slice;
}

void WeightView::check() const {
  switch (dtype) {
    case DType::F32:
    case DType::F16:
    case DType::BF16:
      break;
    case DType::F8_E4M3:
      if (!scale_inv) fail("F8_E4M3 weight [{}, {}] has no scale_inv", rows, cols);
      if (scale_block != kFp8BlockSize && scale_block != kFp8SmallBlockSize)
        fail("F8_E4M3 weight [{}, {}]: scale blocks of {} (the kernels take {} or {})", rows, cols, scale_block,
             kFp8BlockSize, kFp8SmallBlockSize);
      break;
    case DType::F4_E2M1:
      if (!scale_e8m0) fail("F4_E2M1 weight [{}, {}] has no ue8m0 scales", rows, cols);
      [[fallthrough]];
    case DType::Q8_0:
    case DType::Q4_0:
      if (cols % kQuantBlock != 0)
        fail("{} weight [{}, {}] needs a multiple of {} columns", dtype_name(dtype), rows, cols, kQuantBlock);
      break;
    default:
      if (ggml_block_of(dtype)) {
        if (cols % dtype_block_size(dtype) != 0)
          fail("{} weight [{}, {}] needs a multiple of {} columns", dtype_name(dtype), rows, cols,
               dtype_block_size(dtype));
        break;
      }
      fail("weight format {} is not supported by the matrix kernels", dtype_name(dtype));
  }
}

}  // namespace megamoe
