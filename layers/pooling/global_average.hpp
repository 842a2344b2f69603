#pragma once

// Internal: GlobalAveragePooling2D's own kernel, for the cases where oneDNN's pooling primitive
// offers only its reference implementation for a window covering the whole image.
//
// Why GlobalAveragePooling2D asks oneDNN first: measured on this 2-core AVX-512 machine, oneDNN
// 2.6 picks jit:avx512_core for such windows and beats this portable (SSE2 baseline, double
// accumulation) loop while the input sits in cache (16x56x56x64: 0.09 ms vs 0.58 ms; 16x7x7x512:
// 0.018 ms vs 0.079 ms); out of cache both are bound by memory (16x56x56x256: 8.2 ms vs 4.8 ms on
// 2 threads, 5.3 ms vs 7.7 ms on 1). Where oneDNN falls back to its reference implementation
// (the runtime issue measured 60 ms for 16 images of 56x56 on such a CPU, where this loop needs
// well under 1 ms), this kernel runs instead. It sums in double and rounds the mean once; oneDNN
// sums in f32, within the (rows·cols - 1)·2^-24·Σ|x| / (rows·cols) bound the tests check.

#include <cstdint>

#include <keel/engine/engine.hpp>

namespace keel::pooling {

// y[n, c] = mean over `pixels` positions of x (channels-last [N, pixels, C] or channels-first
// [N, C, pixels]); NaN when pixels is 0, as TensorFlow's reduce_mean.
void global_average(const Engine& engine, const float* x, float* y, std::int64_t batch,
                    std::int64_t channels, std::int64_t pixels, bool channels_first);

}  // namespace keel::pooling
