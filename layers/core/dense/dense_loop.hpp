#pragma once

// Internal: keel's own Dense kernel, used when oneDNN offers only a reference implementation
// (or nothing) for a shape, and by the tests as a second path against the naive reference.

#include <cstdint>

#include <keel/engine/engine.hpp>

namespace keel::dense {

// y[r, n] = bias[n] + Σ_k x[r, k]·kernel[k, n] for r < rows, in f32, k ascending. `kernel` is
// Keras' (in, units) row-major layout; `bias` may be null (no bias). Rows run in parallel on
// the engine's threads; each output row is written by one thread.
void dense_loop(const Engine& engine, const float* x, const float* kernel, const float* bias,
                float* y, std::int64_t rows, std::int64_t in, std::int64_t units);

}  // namespace keel::dense
