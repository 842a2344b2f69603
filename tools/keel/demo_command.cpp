#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>

#include "commands.hpp"

namespace keel::cli {
namespace {

// The input's distribution: far from the layer's initial moving statistics (0, 1), so that the
// moving mean visibly moves.
constexpr float kDataMean = 0.5f;
constexpr float kDataStddev = 2.0f;

Tensor random_input(const Shape& shape, std::uint64_t seed) {
    std::mt19937_64 generator(seed);
    std::normal_distribution<float> distribution(kDataMean, kDataStddev);
    std::vector<float> values(static_cast<std::size_t>(element_count(shape)));
    std::generate(values.begin(), values.end(), [&] { return distribution(generator); });
    return Tensor::from_floats(shape, values);
}

// Per-channel mean of channels-last data, in double.
std::vector<double> channel_means(const Tensor& tensor) {
    const std::vector<float> values = tensor.to_floats();
    const auto channels = static_cast<std::size_t>(tensor.dim(-1));
    std::vector<double> sums(channels, 0.0);
    for (std::size_t index = 0; index < values.size(); ++index) {
        sums[index % channels] += values[index];
    }
    const double rows = static_cast<double>(values.size() / channels);
    for (double& sum : sums) {
        sum /= rows;
    }
    return sums;
}

struct Summary {
    double mean = 0.0;
    double stddev = 0.0;
    double minimum = 0.0;
    double maximum = 0.0;
};

Summary summarize(const std::vector<float>& values) {
    Summary summary;
    if (values.empty()) {
        return summary;
    }
    double sum = 0.0;
    for (float value : values) {
        sum += value;
    }
    summary.mean = sum / static_cast<double>(values.size());
    double squares = 0.0;
    for (float value : values) {
        squares += (value - summary.mean) * (value - summary.mean);
    }
    summary.stddev = std::sqrt(squares / static_cast<double>(values.size()));
    const auto [minimum, maximum] = std::minmax_element(values.begin(), values.end());
    summary.minimum = *minimum;
    summary.maximum = *maximum;
    return summary;
}

// Times one call; the first call of a mode also creates (and caches) its primitive or plan.
Tensor timed_call(BatchNormalization& layer, const Tensor& input, bool training, int number) {
    const auto start = std::chrono::steady_clock::now();
    Tensor output = layer.call(input, CallOptions{.training = training});
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;

    // One read of x and one write of y: a lower bound of the traffic, so the rate is a floor.
    const double bytes = static_cast<double>(input.byte_size() + output.byte_size());
    const BatchNormalizationCallReport& report = layer.last_call_report();
    std::printf("  %-9s call %d: %9.3f ms  %7.2f GB/s  path %s (%s)%s\n",
                training ? "training" : "inference", number, elapsed.count() * 1e3,
                bytes / elapsed.count() / 1e9, report.path.c_str(), report.implementation.c_str(),
                number == 1 ? "  [first: includes setup]" : "");
    return output;
}

}  // namespace

int run_demo(const DemoArguments& arguments) {
    const Engine& engine = default_engine();
    std::cout << "keel demo: BatchNormalization on a random NHWC tensor\n\n"
              << engine.describe() << "\n";

    const Shape shape{arguments.batch, arguments.height, arguments.width, arguments.channels};
    const Tensor input = random_input(shape, arguments.seed);
    BatchNormalizationOptions options;
    options.name = "demo_batch_normalization";
    BatchNormalization layer(options, engine);

    std::cout << "input " << shape_to_string(shape) << " " << dtype_name(input.dtype())
              << ", values ~ N(" << kDataMean << ", " << kDataStddev << "^2), seed "
              << arguments.seed << "\nlayer '" << layer.name() << "': axis -1, momentum "
              << options.momentum << ", epsilon " << options.epsilon << "\n";

    Tensor output;
    for (int call = 1; call <= arguments.training_calls; ++call) {
        output =
            Tensor();  // released first, as in a loop over batches: its storage serves the call
        output = timed_call(layer, input, true, call);
    }
    const BatchNormalizationCallReport& report = layer.last_call_report();
    std::cout << "  TF semantics: " << (report.fused_semantics ? "fused" : "generic")
              << " path; output " << shape_to_string(output.shape()) << " "
              << dtype_name(output.dtype()) << "\n";
    const Summary normalized = summarize(output.to_floats());
    std::printf("  training output: mean %.4f, stddev %.4f (normalized: expect ~0 and ~1)\n",
                normalized.mean, normalized.stddev);

    // Every training call saw the same batch, so from its initial zeros the moving mean must be
    // batch_mean * (1 - momentum^calls) per channel.
    const std::vector<double> batch_means = channel_means(input);
    const std::vector<float> moving_mean = layer.variable("moving_mean").to_floats();
    const double kept = std::pow(options.momentum, arguments.training_calls);
    double largest_deviation = 0.0;
    for (std::size_t channel = 0; channel < moving_mean.size(); ++channel) {
        const double expected = batch_means[channel] * (1.0 - kept);
        largest_deviation = std::max(largest_deviation, std::abs(moving_mean[channel] - expected));
    }
    const Summary moving = summarize(moving_mean);
    std::printf(
        "  moving_mean after %d training calls: min %.5f, mean %.5f, max %.5f over %zu channels\n"
        "    expected batch_mean*(1-%.2f^%d); largest deviation %.2e\n",
        arguments.training_calls, moving.minimum, moving.mean, moving.maximum, moving_mean.size(),
        options.momentum, arguments.training_calls, largest_deviation);

    for (int call = 1; call <= arguments.inference_calls; ++call) {
        output =
            Tensor();  // released first, as in a loop over batches: its storage serves the call
        output = timed_call(layer, input, false, call);
    }
    const Summary inferred = summarize(output.to_floats());
    std::printf("  inference output: mean %.4f, stddev %.4f (uses the moving statistics)\n",
                inferred.mean, inferred.stddev);
    return 0;
}

}  // namespace keel::cli
