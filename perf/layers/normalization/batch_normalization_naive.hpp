#pragma once

#include <cstdint>

namespace keel::perf {

// The "good loop" peer: batch normalization written the way a competent C++ programmer would,
// compiled -O3 -march=native (its own translation unit only) so the compiler vectorizes it, and
// parallel over the same number of OpenMP threads as the other peers. Training computes the mean,
// then the variance around it (two passes over x), then normalizes: three reads of x and one write
// of y. It is the floor keel must clear, not a straw man.
struct NaiveBatchNormalization {
    const void* x = nullptr;  // f32, or bf16 bit patterns when `bf16`
    void* y = nullptr;        // same dtype as x
    bool bf16 = false;
    // The tensor as row-major [outer, channels, inner]: inner = 1 for channels-last layouts.
    std::int64_t outer = 0;
    std::int64_t channels = 0;
    std::int64_t inner = 0;
    const float* gamma = nullptr;
    const float* beta = nullptr;
    float* moving_mean = nullptr;      // read at inference, updated in training
    float* moving_variance = nullptr;  // read at inference, updated (unbiased) in training
    float epsilon = 1e-3f;
    float momentum = 0.99f;
    bool training = false;
    int threads = 1;
};

void run_naive_batch_normalization(const NaiveBatchNormalization& problem);

}  // namespace keel::perf
