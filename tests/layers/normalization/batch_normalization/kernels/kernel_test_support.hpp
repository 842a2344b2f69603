#pragma once

// Shared by the batch-normalization kernel tests: the Highway targets to run on, engines with a
// fixed thread count, deterministic data, and the test-side view of a geometry.

#include <hwy/detect_targets.h>
#include <hwy/targets.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/engine.hpp>
#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>

#include "layers/normalization/batch_normalization/kernels/geometry.hpp"

namespace keel::batch_normalization::kernel_testing {

inline constexpr double kEpsilon32 = std::numeric_limits<float>::epsilon();  // 2^-23
inline constexpr double kEpsilon64 = std::numeric_limits<double>::epsilon();

// Every Highway target compiled into keel that this CPU runs (on an AVX-512 machine: AVX3, AVX2,
// SSE4, SSSE3 and SCALAR), so each code path is tested, not only the one dispatch would pick.
inline std::vector<std::int64_t> compiled_targets() {
    hwy::SetSupportedTargetsForTest(0);
    return hwy::SupportedAndGeneratedTargets();
}

inline std::string target_name(std::int64_t target) {
    std::string name = hwy::TargetName(target);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return name;
}

// While alive, dynamic dispatch picks `target` (Highway's own mechanism for per-target tests).
class TargetScope {
  public:
    explicit TargetScope(std::int64_t target) { hwy::SetSupportedTargetsForTest(target); }
    ~TargetScope() { hwy::SetSupportedTargetsForTest(0); }
    TargetScope(const TargetScope&) = delete;
    TargetScope& operator=(const TargetScope&) = delete;
};

// Engines whose arena has exactly 1 or 2 threads.
inline const Engine& engine_with_threads(int threads) {
    static const Engine one(ThreadingOptions{.intra_op_threads = 1});
    static const Engine two(ThreadingOptions{.intra_op_threads = 2});
    return threads == 1 ? one : two;
}

struct GeometryCase {
    Shape shape;
    std::vector<int> kept_axes;
};

inline std::string describe(const GeometryCase& c) {
    std::string text = shape_to_string(c.shape) + " kept {";
    for (std::size_t i = 0; i < c.kept_axes.size(); ++i) {
        if (i > 0) text += ", ";
        text += std::to_string(c.kept_axes[i]);
    }
    return text + "}";
}

// Uniform values in [center − spread, center + spread], rounded to `dtype`.
inline Tensor random_tensor(const Shape& shape, DType dtype, std::uint32_t seed, float center,
                            float spread) {
    std::mt19937 generator(seed);
    std::uniform_real_distribution<float> distribution(center - spread, center + spread);
    std::vector<float> values(static_cast<std::size_t>(element_count(shape)));
    for (float& value : values) value = distribution(generator);
    return Tensor::from_floats(shape, values, dtype);
}

inline std::vector<float> random_vector(std::size_t size, std::uint32_t seed, float low,
                                        float high) {
    std::mt19937 generator(seed);
    std::uniform_real_distribution<float> distribution(low, high);
    std::vector<float> values(size);
    for (float& value : values) value = distribution(generator);
    return values;
}

// The statistic an element belongs to, computed independently of the kernels: row-major over the
// kept axes of the original shape.
inline std::int64_t statistic_of(const GeometryCase& c, std::int64_t flat) {
    std::int64_t statistic = 0;
    std::int64_t stride = 1;
    for (std::size_t i = c.shape.size(); i-- > 0;) {
        const std::int64_t digit = flat % c.shape[i];
        flat /= c.shape[i];
        bool kept = false;
        for (const int axis : c.kept_axes) kept = kept || axis == static_cast<int>(i);
        if (kept) {
            statistic += digit * stride;
            stride *= c.shape[i];
        }
    }
    return statistic;
}

// Spacing of the output format's values near |value| (its ulp), including subnormals.
inline double ulp_of(DType dtype, double value) {
    const double magnitude = std::fabs(value);
    int mantissa_bits = 23;
    int min_exponent = -126;
    if (dtype == DType::bf16) {
        mantissa_bits = 7;
    } else if (dtype == DType::f16) {
        mantissa_bits = 10;
        min_exponent = -14;
    }
    int exponent = magnitude > 0.0 ? std::ilogb(magnitude) : min_exponent;
    if (exponent < min_exponent) exponent = min_exponent;
    return std::ldexp(1.0, exponent - mantissa_bits);
}

// Expects `call` to throw a keel::Error of `category`.
inline void expect_error(ErrorCategory category, const std::function<void()>& call) {
    try {
        call();
        ADD_FAILURE() << "no keel::Error thrown";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), category) << error.what();
    }
}

}  // namespace keel::batch_normalization::kernel_testing
