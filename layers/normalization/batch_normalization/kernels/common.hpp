#pragma once

// Internal: the small helpers moments.cpp and normalize.cpp share (outside Highway's per-target
// code, so both the planners and every target's inner loops can call them).

#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>

#include "layers/normalization/batch_normalization/kernels/geometry.hpp"

namespace keel::batch_normalization {

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Merges the moments (count_b, mean_b, m2_b) of some elements into a running (count, mean, m2)
// with Chan's formula. An empty accumulator (count 0) receives an exact copy; merging an empty
// set changes nothing.
inline void merge_moments(double& count, double& mean, double& m2, double count_b, double mean_b,
                          double m2_b) {
    if (count_b == 0.0) return;
    if (count == 0.0) {
        // The formula below for an empty accumulator (count, mean and m2 all 0), where its weight
        // count_b / count_b is exactly 1: the same bits (0 + mean_b turns −0 into +0, and an
        // infinite mean_b makes m2 NaN through 0·∞), without the division. Whether or not the
        // compiler fuses the formula's products and sums, multiplying by 1 is exact, so this is
        // what either form computes.
        mean = 0.0 + mean_b;
        m2 = 0.0 + (m2_b + mean_b * mean_b * 0.0);
        count = count_b;
        return;
    }
    const double total = count + count_b;
    const double delta = mean_b - mean;
    const double weight = count_b / total;
    mean += delta * weight;
    m2 += m2_b + delta * delta * count * weight;
    count = total;
}

// A kernel's name for reports: "keel:<operation>_<layout><variant>:<target>", e.g.
// "keel:normalize_channels_first_adjusted:avx3". `target` is Highway's name of the dispatched
// target, reported in lower case.
inline std::string kernel_name(std::string_view operation, const ReductionGeometry& geometry,
                               std::string_view variant, std::string_view target) {
    std::string name = "keel:";
    name += operation;
    name += '_';
    name += geometry.channels_last()    ? "channels_last"
            : geometry.channels_first() ? "channels_first"
                                        : "general";
    name += variant;
    name += ':';
    for (const char c : target) {
        name += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return name;
}

}  // namespace keel::batch_normalization
