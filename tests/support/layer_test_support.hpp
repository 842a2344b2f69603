#pragma once

// What the layer tests share: seeded data, error expectations, a forward() without variables and a
// concurrency check.

#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>
#include <keel/layers/layer.hpp>

namespace keel::layer_testing {

// Runs `action`, expecting a keel::Error of `category` whose message contains `fragment`.
template <typename Action>
void expect_error(Action&& action, ErrorCategory category, const std::string& fragment) {
    try {
        action();
        FAIL() << "expected keel::Error containing '" << fragment << "'";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), category) << error.what();
        EXPECT_THAT(error.what(), ::testing::HasSubstr(fragment));
    }
}

// Values uniform in [-bound, bound], the same for the same seed.
inline Tensor random_tensor(const Shape& shape, unsigned seed, float bound = 3.0f) {
    std::mt19937 generator(seed);
    std::uniform_real_distribution<float> distribution(-bound, bound);
    std::vector<float> values(static_cast<std::size_t>(element_count(shape)));
    for (float& value : values) value = distribution(generator);
    return Tensor::from_floats(shape, values);
}

// forward() of a layer that reads no variables, in inference.
inline Tensor run(const Layer& layer, const std::vector<Tensor>& inputs) {
    const std::vector<Tensor> no_variables;
    std::vector<VariableUpdate> updates;
    return layer.forward({inputs, no_variables, false, updates});
}

// Four threads calling forward() at once on one layer give exactly the serial result.
inline void expect_concurrent_forward_identical(const Layer& layer,
                                                const std::vector<Tensor>& inputs) {
    const std::vector<float> expected = run(layer, inputs).to_floats();
    std::vector<std::vector<float>> results(4);
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < results.size(); ++t) {
        threads.emplace_back([&, t] {
            for (int repeat = 0; repeat < 10; ++repeat) {
                results[t] = run(layer, inputs).to_floats();
                if (results[t] != expected) return;
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    for (const std::vector<float>& result : results) EXPECT_EQ(result, expected);
}

}  // namespace keel::layer_testing
