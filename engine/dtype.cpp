#include <keel/engine/dtype.hpp>

#include <bit>
#include <cmath>
#include <string>

#include <keel/engine/error.hpp>

namespace keel {

std::size_t dtype_size(DType dtype) noexcept {
    switch (dtype) {
        case DType::f32:
            return 4;
        case DType::bf16:
        case DType::f16:
            return 2;
        case DType::f64:
            return 8;
    }
    return 0;
}

std::string_view dtype_name(DType dtype) noexcept {
    switch (dtype) {
        case DType::f32:
            return "float32";
        case DType::bf16:
            return "bfloat16";
        case DType::f16:
            return "float16";
        case DType::f64:
            return "float64";
    }
    return "unknown";
}

DType parse_dtype(std::string_view text, std::string_view argument) {
    if (text == "float32" || text == "f32") return DType::f32;
    if (text == "bfloat16" || text == "bf16") return DType::bf16;
    if (text == "float16" || text == "f16") return DType::f16;
    if (text == "float64" || text == "f64") return DType::f64;
    throw invalid_argument("parse_dtype", argument, "'" + std::string(text) + "'",
                           "one of float32, bfloat16, float16, float64 (or f32, bf16, f16, f64)");
}

// The conversions are written without branches so that the bulk loops below vectorize; they are
// also the scalar entry points, so both paths round identically.
namespace {

// Bitwise select: GCC keeps a ternary that feeds on floating-point arithmetic as a branch (the
// arithmetic may trap), which stops vectorization; masks leave it nothing to branch on.
inline std::uint32_t select(bool condition, std::uint32_t if_true, std::uint32_t if_false) {
    const std::uint32_t mask = 0u - static_cast<std::uint32_t>(condition);
    return (if_true & mask) | (if_false & ~mask);
}

constexpr std::uint32_t kF32AbsMask = 0x7fffffffu;
constexpr std::uint32_t kF32Infinity = 0x7f800000u;

inline std::uint16_t to_bf16(float value) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    // Adding 0x7fff plus the lowest kept bit rounds half to even; a carry out of the mantissa
    // bumps the exponent, which is exactly how the largest finite values overflow to infinity.
    const std::uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    // Truncating a NaN could clear every mantissa bit and yield infinity: force the quiet bit.
    const std::uint32_t quiet_nan = (bits >> 16) | 0x0040u;
    const bool is_nan = (bits & kF32AbsMask) > kF32Infinity;
    return static_cast<std::uint16_t>(select(is_nan, quiet_nan, rounded));
}

inline float from_bf16(std::uint16_t bits) {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

inline std::uint16_t to_f16(float value) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    const std::uint32_t sign = (bits >> 16) & 0x8000u;
    const std::uint32_t magnitude = bits & kF32AbsMask;

    // Normal results: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to
    // nearest even. A carry past the largest finite half (65504) lands on 0x7c00, infinity.
    const std::uint32_t odd = (magnitude >> 13) & 1u;
    const std::uint32_t normal = (magnitude - ((127u - 15u) << 23) + 0xfffu + odd) >> 13;

    // Subnormal results (|value| < 2^-14): adding 0.5 (2^-1) aligns the value so the FPU's own
    // round-to-nearest-even drops exactly the bits a half subnormal cannot hold; the low mantissa
    // bits of the sum are then the half's subnormal mantissa.
    constexpr std::uint32_t kSubnormalMagic = 126u << 23;  // 0.5f
    const float aligned = std::bit_cast<float>(magnitude) + std::bit_cast<float>(kSubnormalMagic);
    const std::uint32_t subnormal = std::bit_cast<std::uint32_t>(aligned) - kSubnormalMagic;

    constexpr std::uint32_t kHalfOverflow = (127u + 16u) << 23;   // 2^16: rounds to infinity
    constexpr std::uint32_t kHalfMinNormal = (127u - 14u) << 23;  // 2^-14
    const bool is_nan = magnitude > kF32Infinity;
    const std::uint32_t special = select(is_nan, 0x7e00u, 0x7c00u);
    const std::uint32_t finite = select(magnitude < kHalfMinNormal, subnormal, normal);
    const std::uint32_t result = select(magnitude >= kHalfOverflow, special, finite);
    return static_cast<std::uint16_t>(result | sign);
}

inline float from_f16(std::uint16_t half) {
    const std::uint32_t bits = half;
    const std::uint32_t sign = (bits & 0x8000u) << 16;
    const std::uint32_t exponent = bits & 0x7c00u;
    const std::uint32_t shifted = (bits & 0x7fffu) << 13;

    const std::uint32_t normal = shifted + ((127u - 15u) << 23);
    // Infinity and NaN keep their mantissa (so the quiet bit) and get the all-ones exponent.
    const std::uint32_t special = shifted | kF32Infinity;
    // Subnormal half: build 2^-14 * (1 + m/1024) exactly and subtract the implicit 2^-14.
    constexpr std::uint32_t kMinNormal = (127u - 14u) << 23;
    const float scaled =
        std::bit_cast<float>(shifted + kMinNormal) - std::bit_cast<float>(kMinNormal);
    const std::uint32_t subnormal = std::bit_cast<std::uint32_t>(scaled);

    const std::uint32_t magnitude =
        select(exponent == 0x7c00u, special, select(exponent == 0, subnormal, normal));
    return std::bit_cast<float>(magnitude | sign);
}

// Narrows a double to float rounding toward zero and setting the lowest bit if anything was
// dropped ("round to odd"). Rounding that float again to a 16-bit format to nearest even then gives
// the same result as rounding the double directly, because f32 keeps more than two bits beyond
// either 16-bit format; plain double -> float -> 16-bit would round twice.
inline float narrow_round_to_odd(double value) {
    const float nearest = static_cast<float>(value);
    if (std::isnan(value) || static_cast<double>(nearest) == value) return nearest;
    auto bits = std::bit_cast<std::uint32_t>(nearest);
    if (std::abs(static_cast<double>(nearest)) > std::abs(value)) --bits;  // back toward zero
    return std::bit_cast<float>(bits | 1u);
}

}  // namespace

std::uint16_t float_to_bf16_bits(float value) noexcept { return to_bf16(value); }
float bf16_bits_to_float(std::uint16_t bits) noexcept { return from_bf16(bits); }
std::uint16_t float_to_f16_bits(float value) noexcept { return to_f16(value); }
float f16_bits_to_float(std::uint16_t bits) noexcept { return from_f16(bits); }

std::uint16_t double_to_bf16_bits(double value) noexcept {
    return to_bf16(narrow_round_to_odd(value));
}
std::uint16_t double_to_f16_bits(double value) noexcept {
    return to_f16(narrow_round_to_odd(value));
}

void convert_f32_to_bf16(const float* source, std::uint16_t* destination,
                         std::size_t count) noexcept {
    for (std::size_t i = 0; i < count; ++i) destination[i] = to_bf16(source[i]);
}

void convert_bf16_to_f32(const std::uint16_t* source, float* destination,
                         std::size_t count) noexcept {
    for (std::size_t i = 0; i < count; ++i) destination[i] = from_bf16(source[i]);
}

void convert_f32_to_f16(const float* source, std::uint16_t* destination,
                        std::size_t count) noexcept {
    for (std::size_t i = 0; i < count; ++i) destination[i] = to_f16(source[i]);
}

void convert_f16_to_f32(const std::uint16_t* source, float* destination,
                        std::size_t count) noexcept {
    for (std::size_t i = 0; i < count; ++i) destination[i] = from_f16(source[i]);
}

}  // namespace keel
