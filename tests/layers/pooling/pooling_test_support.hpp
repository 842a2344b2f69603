#pragma once

// What the pooling tests share: a naive reference with TensorFlow's padding rules written out
// independently of keel's, seeded data, error expectations and a concurrency check.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/error.hpp>
#include <keel/layers/layer.hpp>

#include "support/layer_test_support.hpp"

namespace keel::pooling_test {

using layer_testing::expect_concurrent_forward_identical;
using layer_testing::expect_error;

inline Tensor random_tensor(const Shape& shape, unsigned seed) {
    return layer_testing::random_tensor(shape, seed, 4.0f);
}

struct Case {
    std::int64_t batch, channels, height, width;
    std::int64_t pool_h, pool_w, stride_h, stride_w;
    bool same;
    bool channels_first;

    std::string describe() const {
        return "N" + std::to_string(batch) + " C" + std::to_string(channels) + " " +
               std::to_string(height) + "x" + std::to_string(width) + " pool " +
               std::to_string(pool_h) + "x" + std::to_string(pool_w) + " stride " +
               std::to_string(stride_h) + "x" + std::to_string(stride_w) +
               (same ? " same" : " valid") + (channels_first ? " NCHW" : " NHWC");
    }
    Shape input_shape() const {
        return channels_first ? Shape{batch, channels, height, width}
                              : Shape{batch, height, width, channels};
    }
};

// One output of the reference: the pooled value and, for averages, the sum of magnitudes of the
// window (what bounds the rounding error of an f32 sum).
struct Pooled {
    double value = 0.0;
    double magnitude = 0.0;
};

struct Reference {
    Shape shape;
    std::vector<Pooled> outputs;  // in the output's row-major order
};

// TensorFlow: 'same' gives ceil(in / stride) outputs and pads max((out-1)·stride + pool - in, 0)
// in total, the smaller half before; 'valid' gives floor((in - pool) / stride) + 1.
inline void tf_padding(std::int64_t in, std::int64_t pool, std::int64_t stride, bool same,
                       std::int64_t& out, std::int64_t& before) {
    if (same) {
        out = (in + stride - 1) / stride;
        const std::int64_t total = std::max<std::int64_t>((out - 1) * stride + pool - in, 0);
        before = total / 2;
    } else {
        out = (in - pool) / stride + 1;
        before = 0;
    }
}

// Max pads with -inf; average averages over the window positions inside the input only.
inline Reference reference_pool(const Tensor& input, const Case& c, bool max) {
    std::int64_t out_h = 0, out_w = 0, top = 0, left = 0;
    tf_padding(c.height, c.pool_h, c.stride_h, c.same, out_h, top);
    tf_padding(c.width, c.pool_w, c.stride_w, c.same, out_w, left);
    Reference reference;
    reference.shape = c.channels_first ? Shape{c.batch, c.channels, out_h, out_w}
                                       : Shape{c.batch, out_h, out_w, c.channels};
    reference.outputs.resize(static_cast<std::size_t>(element_count(reference.shape)));
    const std::vector<float> x = input.to_floats();
    auto in_index = [&](std::int64_t n, std::int64_t ch, std::int64_t h, std::int64_t w) {
        return c.channels_first ? ((n * c.channels + ch) * c.height + h) * c.width + w
                                : ((n * c.height + h) * c.width + w) * c.channels + ch;
    };
    auto out_index = [&](std::int64_t n, std::int64_t ch, std::int64_t h, std::int64_t w) {
        return c.channels_first ? ((n * c.channels + ch) * out_h + h) * out_w + w
                                : ((n * out_h + h) * out_w + w) * c.channels + ch;
    };
    for (std::int64_t n = 0; n < c.batch; ++n) {
        for (std::int64_t ch = 0; ch < c.channels; ++ch) {
            for (std::int64_t oh = 0; oh < out_h; ++oh) {
                for (std::int64_t ow = 0; ow < out_w; ++ow) {
                    double best = -std::numeric_limits<double>::infinity();
                    double sum = 0.0, magnitude = 0.0;
                    std::int64_t count = 0;
                    for (std::int64_t i = 0; i < c.pool_h; ++i) {
                        for (std::int64_t j = 0; j < c.pool_w; ++j) {
                            const std::int64_t h = oh * c.stride_h - top + i;
                            const std::int64_t w = ow * c.stride_w - left + j;
                            if (h < 0 || h >= c.height || w < 0 || w >= c.width) continue;
                            const double v = x[static_cast<std::size_t>(in_index(n, ch, h, w))];
                            best = std::max(best, v);
                            sum += v;
                            magnitude += std::abs(v);
                            ++count;
                        }
                    }
                    Pooled& pooled =
                        reference.outputs[static_cast<std::size_t>(out_index(n, ch, oh, ow))];
                    pooled.value = max ? best : sum / static_cast<double>(count);
                    pooled.magnitude = magnitude;
                }
            }
        }
    }
    return reference;
}

// The test matrix: odd and even sizes (odd and even 'same' totals), batch 1 and 3, channel counts
// that are not multiples of 8 or 16, pool 2 and 3 (and a non-square one), strides 1 and 2.
inline std::vector<Case> case_matrix() {
    std::vector<Case> cases;
    for (const bool channels_first : {false, true}) {
        for (const bool same : {false, true}) {
            for (const std::int64_t batch : {1, 3}) {
                for (const std::int64_t channels : {3, 17}) {
                    for (const std::int64_t pool : {2, 3}) {
                        for (const std::int64_t stride : {1, 2}) {
                            cases.push_back({batch, channels, 7, 8, pool, pool, stride, stride,
                                             same, channels_first});
                        }
                    }
                }
            }
            cases.push_back({2, 5, 9, 6, 3, 2, 2, 1, same, channels_first});
            cases.push_back({1, 33, 4, 5, 2, 3, 3, 2, same, channels_first});
            cases.push_back({1, 2, 2, 2, 3, 3, 1, 1, true, channels_first});  // pool > input
        }
    }
    return cases;
}

}  // namespace keel::pooling_test
