#include <keel/engine/dtype.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

float bits_to_float(std::uint32_t bits) { return std::bit_cast<float>(bits); }

TEST(DType, SizesAndNames) {
    EXPECT_EQ(dtype_size(DType::f32), 4u);
    EXPECT_EQ(dtype_size(DType::bf16), 2u);
    EXPECT_EQ(dtype_size(DType::f16), 2u);
    EXPECT_EQ(dtype_size(DType::f64), 8u);
    EXPECT_EQ(dtype_name(DType::f32), "float32");
    EXPECT_EQ(dtype_name(DType::bf16), "bfloat16");
    EXPECT_EQ(dtype_name(DType::f16), "float16");
    EXPECT_EQ(dtype_name(DType::f64), "float64");
}

TEST(DType, ParsesCanonicalAndShortNames) {
    for (const DType dtype : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
        EXPECT_EQ(parse_dtype(dtype_name(dtype)), dtype);
    }
    EXPECT_EQ(parse_dtype("f32"), DType::f32);
    EXPECT_EQ(parse_dtype("bf16"), DType::bf16);
    EXPECT_EQ(parse_dtype("f16"), DType::f16);
    EXPECT_EQ(parse_dtype("f64"), DType::f64);
}

TEST(DType, RejectsUnknownNamesNamingTheArgument) {
    try {
        parse_dtype("int8", "compute_dtype");
        FAIL() << "parse_dtype accepted int8";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), ErrorCategory::invalid_argument);
        EXPECT_NE(std::string(error.what()).find("compute_dtype = 'int8'; expected"),
                  std::string::npos)
            << error.what();
    }
    EXPECT_THROW(parse_dtype("Float32"), Error);
    EXPECT_THROW(parse_dtype(""), Error);
}

// bf16 keeps the top 16 bits of a float: 7 explicit mantissa bits, so near 1.0 its spacing is
// 2^-7 and the halfway point between two neighbours is 2^-8 past the lower one.
TEST(BFloat16, RoundsTiesToEven) {
    EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3f80);
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x3f808000)), 0x3f80);  // tie, 0x3f80 is even
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x3f818000)), 0x3f82);  // tie, 0x3f81 is odd
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x3f807fff)), 0x3f80);  // just below the tie
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x3f808001)), 0x3f81);  // just above the tie
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0xbf808000)), 0xbf80);  // sign is symmetric
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0xbf818000)), 0xbf82);
}

TEST(BFloat16, InfinityNaNAndOverflow) {
    const float inf = std::numeric_limits<float>::infinity();
    EXPECT_EQ(float_to_bf16_bits(inf), 0x7f80);
    EXPECT_EQ(float_to_bf16_bits(-inf), 0xff80);
    // 0x7f7f is the largest finite bf16; the halfway point above it rounds to infinity because
    // 0x7f7f is odd, and FLT_MAX lies beyond that halfway point.
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x7f7f7fff)), 0x7f7f);
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x7f7f8000)), 0x7f80);
    EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);
    EXPECT_EQ(float_to_bf16_bits(-std::numeric_limits<float>::max()), 0xff80);

    // A NaN whose payload sits only in the low bits must not truncate to infinity.
    for (const std::uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
        const std::uint16_t bf16 = float_to_bf16_bits(bits_to_float(nan_bits));
        EXPECT_TRUE(std::isnan(bf16_bits_to_float(bf16))) << std::hex << nan_bits;
        EXPECT_NE(bf16 & 0x0040, 0) << "quiet bit missing for " << std::hex << nan_bits;
        EXPECT_EQ(bf16 & 0x8000, (nan_bits >> 16) & 0x8000) << "sign lost";
    }
}

TEST(BFloat16, Subnormals) {
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x00010000)), 0x0001);  // exact subnormal
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x00008000)), 0x0000);  // tie to even zero
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x00018000)), 0x0002);  // tie to even 2
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x00000001)), 0x0000);
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x80000001)), 0x8000);  // keeps the sign
    EXPECT_EQ(float_to_bf16_bits(bits_to_float(0x007fffff)), 0x0080);  // rounds up to normal
    EXPECT_EQ(bf16_bits_to_float(0x0001), bits_to_float(0x00010000));
}

TEST(BFloat16, EveryValueRoundTrips) {
    for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
        const auto bf16 = static_cast<std::uint16_t>(bits);
        const float value = bf16_bits_to_float(bf16);
        EXPECT_EQ(std::bit_cast<std::uint32_t>(value), bits << 16);
        if (std::isnan(value)) {
            EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(value))));
        } else {
            ASSERT_EQ(float_to_bf16_bits(value), bf16) << std::hex << bits;
        }
    }
}

// f16: 10 mantissa bits, exponent bias 15, largest finite 65504 (0x7bff), smallest subnormal 2^-24.
TEST(Float16, RoundsTiesToEven) {
    EXPECT_EQ(float_to_f16_bits(1.0f), 0x3c00);
    EXPECT_EQ(float_to_f16_bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie to even
    EXPECT_EQ(float_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie to even
    EXPECT_EQ(float_to_f16_bits(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
    EXPECT_EQ(float_to_f16_bits(-2.5f), 0xc100);
    EXPECT_EQ(float_to_f16_bits(0.0f), 0x0000);
    EXPECT_EQ(float_to_f16_bits(-0.0f), 0x8000);
}

TEST(Float16, OverflowInfinityAndNaN) {
    EXPECT_EQ(float_to_f16_bits(65504.0f), 0x7bff);
    EXPECT_EQ(float_to_f16_bits(65519.996f), 0x7bff);  // below the halfway point 65520
    EXPECT_EQ(float_to_f16_bits(65520.0f), 0x7c00);    // tie; 0x7bff is odd, so infinity
    EXPECT_EQ(float_to_f16_bits(1.0e6f), 0x7c00);
    EXPECT_EQ(float_to_f16_bits(-1.0e6f), 0xfc00);
    EXPECT_EQ(float_to_f16_bits(std::numeric_limits<float>::infinity()), 0x7c00);
    EXPECT_EQ(float_to_f16_bits(-std::numeric_limits<float>::infinity()), 0xfc00);
    for (const std::uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xffc00000u}) {
        const std::uint16_t half = float_to_f16_bits(bits_to_float(nan_bits));
        EXPECT_EQ(half & 0x7c00, 0x7c00);
        EXPECT_NE(half & 0x03ff, 0) << "NaN became infinity for " << std::hex << nan_bits;
    }
    EXPECT_TRUE(std::isinf(f16_bits_to_float(0x7c00)));
    EXPECT_TRUE(std::isnan(f16_bits_to_float(0x7e00)));
    EXPECT_TRUE(std::isnan(f16_bits_to_float(0x7c01)));
}

TEST(Float16, Subnormals) {
    const float smallest = std::ldexp(1.0f, -24);
    EXPECT_EQ(float_to_f16_bits(smallest), 0x0001);
    EXPECT_EQ(float_to_f16_bits(smallest / 2), 0x0000);      // tie to even zero
    EXPECT_EQ(float_to_f16_bits(smallest * 1.5f), 0x0002);   // tie to even 2
    EXPECT_EQ(float_to_f16_bits(smallest * 0.75f), 0x0001);  // above the tie
    EXPECT_EQ(float_to_f16_bits(-smallest * 0.25f), 0x8000);
    EXPECT_EQ(float_to_f16_bits(std::ldexp(1.0f, -14)), 0x0400);     // smallest normal
    EXPECT_EQ(float_to_f16_bits(std::ldexp(1023.5f, -24)), 0x0400);  // tie rounds into normals
    EXPECT_EQ(f16_bits_to_float(0x0001), smallest);
    EXPECT_EQ(f16_bits_to_float(0x83ff), -std::ldexp(1023.0f, -24));
}

TEST(Float16, EveryValueRoundTrips) {
    for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
        const auto half = static_cast<std::uint16_t>(bits);
        const float value = f16_bits_to_float(half);
        if (std::isnan(value)) {
            EXPECT_EQ(bits & 0x7c00, 0x7c00u);
            EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(value))));
        } else {
            ASSERT_EQ(float_to_f16_bits(value), half) << std::hex << bits;
        }
    }
}

// Property check over random non-negative floats up to `max_float_bits` (uniform over encodings,
// so every binade and the subnormals are sampled): the result is the nearest representable value
// and exact ties go to the even encoding. The neighbours of a non-negative 16-bit encoding are the
// encodings one below and one above, so this needs no reference implementation. Differences are
// computed in double, where the difference of two nearby floats is exact.
template <typename ToBits, typename FromBits>
void expect_round_to_nearest_even(ToBits to_bits, FromBits from_bits, std::uint16_t largest_finite,
                                  std::uint32_t max_float_bits) {
    std::mt19937 random(20240603);
    std::uniform_int_distribution<std::uint32_t> encodings(0, max_float_bits);
    for (int trial = 0; trial < 200000; ++trial) {
        const float value = bits_to_float(encodings(random));
        const std::uint16_t rounded = to_bits(value);
        ASSERT_LE(rounded, largest_finite) << value;
        const double error = std::abs(static_cast<double>(from_bits(rounded)) - value);
        for (const int step : {-1, 1}) {
            const int neighbour = rounded + step;
            if (neighbour < 0 || neighbour > largest_finite) continue;
            const double other = std::abs(
                static_cast<double>(from_bits(static_cast<std::uint16_t>(neighbour))) - value);
            ASSERT_LE(error, other) << "not nearest for " << value;
            if (error == other) {
                ASSERT_EQ(rounded % 2, 0) << "tie not even for " << value;
            }
        }
    }
}

TEST(DTypeConversion, RandomValuesRoundToNearestEven) {
    // Upper bounds: the last floats that still round to the largest finite 16-bit value.
    expect_round_to_nearest_even(float_to_bf16_bits, bf16_bits_to_float, 0x7f7f, 0x7f7f7fffu);
    expect_round_to_nearest_even(float_to_f16_bits, f16_bits_to_float, 0x7bff,
                                 std::bit_cast<std::uint32_t>(65519.996f));
}

TEST(DTypeConversion, BulkMatchesScalar) {
    std::vector<float> values;
    std::mt19937 random(7);
    std::uniform_int_distribution<std::uint32_t> bits;
    for (int i = 0; i < 1003; ++i) values.push_back(bits_to_float(bits(random)));
    for (const std::uint32_t special : {0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u,
                                        0x00000001u, 0x80000000u, 0x477fefffu, 0x477ff000u}) {
        values.push_back(bits_to_float(special));
    }
    std::vector<std::uint16_t> bf16(values.size());
    std::vector<std::uint16_t> f16(values.size());
    convert_f32_to_bf16(values.data(), bf16.data(), values.size());
    convert_f32_to_f16(values.data(), f16.data(), values.size());
    std::vector<float> from_bf16(values.size());
    std::vector<float> from_f16(values.size());
    convert_bf16_to_f32(bf16.data(), from_bf16.data(), values.size());
    convert_f16_to_f32(f16.data(), from_f16.data(), values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
        ASSERT_EQ(bf16[i], float_to_bf16_bits(values[i])) << i;
        ASSERT_EQ(f16[i], float_to_f16_bits(values[i])) << i;
        ASSERT_EQ(std::bit_cast<std::uint32_t>(from_bf16[i]),
                  std::bit_cast<std::uint32_t>(bf16_bits_to_float(bf16[i])));
        ASSERT_EQ(std::bit_cast<std::uint32_t>(from_f16[i]),
                  std::bit_cast<std::uint32_t>(f16_bits_to_float(f16[i])));
    }
}

}  // namespace
}  // namespace keel
