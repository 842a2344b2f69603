#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string_view>

#include <keel/engine/tensor.hpp>

namespace keel {

// NumPy .npy files (format versions 1.0, 2.0 and 3.0).
// Reading accepts little- and big-endian float16/float32/float64 and signed/unsigned integers of
// 1-8 bytes and bool, in C or Fortran order. float16 arrives as DType::f16, float32 as f32,
// float64 and every integer type as f64 (integers beyond 2^53 lose precision). Fortran-order data
// is transposed into keel's row-major layout. A truncated file, a malformed header, an unsupported
// dtype, an element count that overflows or does not match the payload is a keel::Error naming the
// file and what is wrong; nothing is allocated beyond the file's own size.
Tensor read_npy(const std::filesystem::path& path);
// Same, from bytes in memory; `name` is used in error messages.
Tensor parse_npy(std::span<const std::byte> bytes, std::string_view name = "npy data");

// Writes `tensor` as a little-endian float32 C-order .npy (version 1.0), converting other dtypes.
void write_npy(const std::filesystem::path& path, const Tensor& tensor);

}  // namespace keel
