#include "layers/core/dense/dense_loop.hpp"

#include <algorithm>

#include "engine/threading.hpp"

namespace keel::dense {

void dense_loop(const Engine& engine, const float* x, const float* kernel, const float* bias,
                float* y, std::int64_t rows, std::int64_t in, std::int64_t units) {
    // Enough rows per chunk that a chunk does ~64k multiply-adds: scheduling costs microseconds.
    constexpr std::int64_t kWorkPerChunk = 65536;
    const std::int64_t work_per_row = std::max<std::int64_t>(1, in * units);
    const std::int64_t grain = std::max<std::int64_t>(1, kWorkPerChunk / work_per_row);
    parallel_for(engine, rows, grain, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t r = begin; r < end; ++r) {
            float* out = y + r * units;
            const float* row = x + r * in;
            if (bias != nullptr) {
                std::copy(bias, bias + units, out);
            } else {
                std::fill(out, out + units, 0.0f);
            }
            // The kernel's rows are contiguous over units: the inner loop is a vectorizable axpy.
            for (std::int64_t k = 0; k < in; ++k) {
                const float a = row[k];
                const float* weights = kernel + k * units;
                for (std::int64_t n = 0; n < units; ++n) out[n] += a * weights[n];
            }
        }
    });
}

}  // namespace keel::dense
