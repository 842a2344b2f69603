// Compiled with -O3 -march=native: this file is the naive peer and nothing else. It shares no
// inline code of its own with the rest of the binary, so its native instructions stay here.
#include "perf/layers/normalization/batch_normalization_naive.hpp"

#include <omp.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace keel::perf {
namespace {

using Index = std::int64_t;

inline float load(float value) { return value; }
inline float load(std::uint16_t bf16_bits) {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bf16_bits) << 16);
}

inline void store(float& destination, float value) { destination = value; }
// Round to nearest even; inputs are finite, so no NaN case.
inline void store(std::uint16_t& destination, float value) {
    std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    destination = static_cast<std::uint16_t>(bits >> 16);
}

// Per-channel scale and shift of y = x * scale + shift.
struct Affine {
    std::unique_ptr<float[]> scale;
    std::unique_ptr<float[]> shift;

    explicit Affine(Index channels)
        : scale(std::make_unique<float[]>(static_cast<std::size_t>(channels))),
          shift(std::make_unique<float[]>(static_cast<std::size_t>(channels))) {}
};

void set_channel(const NaiveBatchNormalization& problem, Affine& affine, Index c, double mean,
                 double variance) {
    const double scale = problem.gamma[c] / std::sqrt(variance + problem.epsilon);
    affine.scale[c] = static_cast<float>(scale);
    affine.shift[c] = static_cast<float>(problem.beta[c] - mean * scale);
}

void update_moving(const NaiveBatchNormalization& problem, Index c, double mean, double variance,
                   Index count) {
    const double unbiased = count > 1 ? variance * count / (count - 1) : variance;
    const double keep = problem.momentum;
    problem.moving_mean[c] = static_cast<float>(problem.moving_mean[c] * keep + mean * (1 - keep));
    problem.moving_variance[c] =
        static_cast<float>(problem.moving_variance[c] * keep + unbiased * (1 - keep));
}

Affine inference_affine(const NaiveBatchNormalization& problem) {
    Affine affine(problem.channels);
    for (Index c = 0; c < problem.channels; ++c) {
        set_channel(problem, affine, c, problem.moving_mean[c], problem.moving_variance[c]);
    }
    return affine;
}

// [rows, channels]: the inner loop runs over channels, one accumulator each, which vectorizes
// without reassociating any sum.
template <typename T>
void channels_last(const NaiveBatchNormalization& problem) {
    const T* x = static_cast<const T*>(problem.x);
    T* y = static_cast<T*>(problem.y);
    const Index rows = problem.outer;
    const Index channels = problem.channels;
    Affine affine(channels);
    if (!problem.training) {
        affine = inference_affine(problem);
    }
    const auto count = static_cast<std::size_t>(channels);
    const auto mean = std::make_unique<double[]>(count);
    const auto squares = std::make_unique<double[]>(count);
#pragma omp parallel num_threads(problem.threads)
    {
        if (problem.training) {
            // Each thread sums its rows into its own accumulators, then adds them to the totals.
            const auto local = std::make_unique<double[]>(count);
#pragma omp for schedule(static) nowait
            for (Index r = 0; r < rows; ++r) {
                for (Index c = 0; c < channels; ++c) {
                    local[c] += load(x[r * channels + c]);
                }
            }
#pragma omp critical
            for (Index c = 0; c < channels; ++c) {
                mean[c] += local[c];
            }
#pragma omp barrier
#pragma omp single
            for (Index c = 0; c < channels; ++c) {
                mean[c] /= static_cast<double>(rows);
            }
            for (Index c = 0; c < channels; ++c) {
                local[c] = 0.0;
            }
#pragma omp for schedule(static) nowait
            for (Index r = 0; r < rows; ++r) {
                for (Index c = 0; c < channels; ++c) {
                    const double deviation = load(x[r * channels + c]) - mean[c];
                    local[c] += deviation * deviation;
                }
            }
#pragma omp critical
            for (Index c = 0; c < channels; ++c) {
                squares[c] += local[c];
            }
#pragma omp barrier
#pragma omp single
            for (Index c = 0; c < channels; ++c) {
                const double variance = squares[c] / static_cast<double>(rows);
                set_channel(problem, affine, c, mean[c], variance);
                update_moving(problem, c, mean[c], variance, rows);
            }
        }
        const float* scale = affine.scale.get();
        const float* shift = affine.shift.get();
#pragma omp for schedule(static)
        for (Index r = 0; r < rows; ++r) {
            for (Index c = 0; c < channels; ++c) {
                store(y[r * channels + c], load(x[r * channels + c]) * scale[c] + shift[c]);
            }
        }
    }
}

// [batch, channels, plane]: each channel's statistics are reductions over contiguous planes;
// `omp simd reduction` lets the compiler vectorize them as a programmer would ask it to.
template <typename T>
void channels_first(const NaiveBatchNormalization& problem) {
    const T* x = static_cast<const T*>(problem.x);
    T* y = static_cast<T*>(problem.y);
    const Index batch = problem.outer;
    const Index channels = problem.channels;
    const Index plane = problem.inner;
    Affine affine(channels);
    if (problem.training) {
        const Index count = batch * plane;
#pragma omp parallel for num_threads(problem.threads) schedule(static)
        for (Index c = 0; c < channels; ++c) {
            double sum = 0.0;
            for (Index n = 0; n < batch; ++n) {
                const T* source = x + (n * channels + c) * plane;
#pragma omp simd reduction(+ : sum)
                for (Index i = 0; i < plane; ++i) {
                    sum += load(source[i]);
                }
            }
            const double mean = sum / count;
            double squares = 0.0;
            for (Index n = 0; n < batch; ++n) {
                const T* source = x + (n * channels + c) * plane;
#pragma omp simd reduction(+ : squares)
                for (Index i = 0; i < plane; ++i) {
                    const double deviation = load(source[i]) - mean;
                    squares += deviation * deviation;
                }
            }
            const double variance = squares / count;
            set_channel(problem, affine, c, mean, variance);
            update_moving(problem, c, mean, variance, count);
        }
    } else {
        affine = inference_affine(problem);
    }
    const float* scale_of = affine.scale.get();
    const float* shift_of = affine.shift.get();
#pragma omp parallel for num_threads(problem.threads) schedule(static)
    for (Index p = 0; p < batch * channels; ++p) {
        const float scale = scale_of[p % channels];
        const float shift = shift_of[p % channels];
        const T* source = x + p * plane;
        T* destination = y + p * plane;
        for (Index i = 0; i < plane; ++i) {
            store(destination[i], load(source[i]) * scale + shift);
        }
    }
}

}  // namespace

void run_naive_batch_normalization(const NaiveBatchNormalization& problem) {
    if (problem.inner == 1) {
        problem.bf16 ? channels_last<std::uint16_t>(problem) : channels_last<float>(problem);
    } else {
        problem.bf16 ? channels_first<std::uint16_t>(problem) : channels_first<float>(problem);
    }
}

}  // namespace keel::perf
