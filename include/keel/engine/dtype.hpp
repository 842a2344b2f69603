#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace keel {

// Element types a Tensor can hold. Statistics and variables are always f32 (or wider); the 16-bit
// types are storage formats that keel widens to f32 for arithmetic.
enum class DType : std::uint8_t { f32, bf16, f16, f64 };

std::size_t dtype_size(DType dtype) noexcept;

// Canonical NumPy-style name: "float32", "bfloat16", "float16", "float64".
std::string_view dtype_name(DType dtype) noexcept;

// Accepts the canonical names and the short ones ("f32", "bf16", "f16", "f64").
// Throws keel::Error (invalid_argument) naming `argument` for anything else.
DType parse_dtype(std::string_view text, std::string_view argument = "dtype");

// Round-to-nearest-even conversions. NaN stays NaN (quiet), infinities stay infinite, values past
// the 16-bit range round to infinity as IEEE 754 requires.
std::uint16_t float_to_bf16_bits(float value) noexcept;
float bf16_bits_to_float(std::uint16_t bits) noexcept;
std::uint16_t float_to_f16_bits(float value) noexcept;
float f16_bits_to_float(std::uint16_t bits) noexcept;

// A double rounded once, to nearest even, to a 16-bit format (not twice through the nearest f32).
std::uint16_t double_to_bf16_bits(double value) noexcept;
std::uint16_t double_to_f16_bits(double value) noexcept;

// Bulk conversions between f32 and a 16-bit format (used by tensor conversion and kernels).
void convert_f32_to_bf16(const float* source, std::uint16_t* destination,
                         std::size_t count) noexcept;
void convert_bf16_to_f32(const std::uint16_t* source, float* destination,
                         std::size_t count) noexcept;
void convert_f32_to_f16(const float* source, std::uint16_t* destination,
                        std::size_t count) noexcept;
void convert_f16_to_f32(const std::uint16_t* source, float* destination,
                        std::size_t count) noexcept;

}  // namespace keel
