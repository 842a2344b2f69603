#include "layers/pooling/global_average.hpp"

#include <algorithm>
#include <array>

#include "engine/threading.hpp"

namespace keel::pooling {
namespace {

constexpr std::int64_t kChannelBlock = 64;          // channels-last task width: whole cache lines
constexpr std::int64_t kGrainElements = 64 * 1024;  // input elements per task at least

// Channels-last: each task sums one block of channels of one image; the channel loop is
// contiguous and vectorizes.
void mean_channels_last(const Engine& engine, const float* x, float* y, std::int64_t batch,
                        std::int64_t pixels, std::int64_t channels) {
    const std::int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
    const std::int64_t task_elements =
        std::max<std::int64_t>(1, pixels * std::min(channels, kChannelBlock));
    parallel_for(engine, batch * blocks, kGrainElements / task_elements + 1,
                 [&](std::int64_t begin, std::int64_t end) {
                     std::array<double, kChannelBlock> sums{};
                     for (std::int64_t task = begin; task < end; ++task) {
                         const std::int64_t n = task / blocks;
                         const std::int64_t first = (task % blocks) * kChannelBlock;
                         const std::int64_t width = std::min(kChannelBlock, channels - first);
                         std::fill(sums.begin(), sums.end(), 0.0);
                         const float* image = x + n * pixels * channels + first;
                         for (std::int64_t p = 0; p < pixels; ++p) {
                             const float* row = image + p * channels;
                             for (std::int64_t c = 0; c < width; ++c) sums[c] += row[c];
                         }
                         float* out = y + n * channels + first;
                         for (std::int64_t c = 0; c < width; ++c) {
                             out[c] = static_cast<float>(sums[c] / static_cast<double>(pixels));
                         }
                     }
                 });
}

// Channels-first: each (image, channel) plane is contiguous; independent partial sums let the
// compiler vectorize the reduction without reassociating one chain.
void mean_channels_first(const Engine& engine, const float* x, float* y, std::int64_t planes,
                         std::int64_t pixels) {
    constexpr std::int64_t kLanes = 8;
    parallel_for(engine, planes, kGrainElements / std::max<std::int64_t>(pixels, 1) + 1,
                 [&](std::int64_t begin, std::int64_t end) {
                     for (std::int64_t plane = begin; plane < end; ++plane) {
                         const float* in = x + plane * pixels;
                         std::array<double, kLanes> partial{};
                         std::int64_t p = 0;
                         for (; p + kLanes <= pixels; p += kLanes) {
                             for (std::int64_t lane = 0; lane < kLanes; ++lane) {
                                 partial[lane] += in[p + lane];
                             }
                         }
                         double sum = 0.0;
                         for (; p < pixels; ++p) sum += in[p];
                         for (const double value : partial) sum += value;
                         y[plane] = static_cast<float>(sum / static_cast<double>(pixels));
                     }
                 });
}

}  // namespace

void global_average(const Engine& engine, const float* x, float* y, std::int64_t batch,
                    std::int64_t channels, std::int64_t pixels, bool channels_first) {
    if (channels_first) {
        mean_channels_first(engine, x, y, batch * channels, pixels);
    } else {
        mean_channels_last(engine, x, y, batch, pixels, channels);
    }
}

}  // namespace keel::pooling
