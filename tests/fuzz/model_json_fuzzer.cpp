// libFuzzer harness for keel's Keras model loader: load_keras_model on any JSON document, with a
// small fixed weights directory, then one inference and one training run on a tiny input when the
// model loads. Bad input must be a keel::Error.
//
// The weights directory, written at start (one fixed directory under the temporary directory, left
// in place: libFuzzer's exits skip atexit handlers), holds variables for layers named "bn"
// (BatchNormalization on 3 channels), "dense" (Dense 2 → 2), "conv" (Conv2D 3x3, 3 → 2 channels)
// and "dw" (DepthwiseConv2D 3x3 on 3 channels, multiplier 1), the names and shapes the seed models
// use.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/npy.hpp>
#include <keel/runtime/keras_model.hpp>

#include "fuzz/fuzz_support.hpp"

namespace {

namespace fs = std::filesystem;

const fs::path& weights_dir() {
    static const fs::path directory = fs::temp_directory_path() / "keel_model_json_fuzzer_weights";
    return directory;
}

void write_variable(const std::string& layer, const std::string& variable, keel::Shape shape) {
    fs::create_directories(weights_dir() / layer);
    std::vector<float> values(static_cast<std::size_t>(keel::element_count(shape)));
    for (std::size_t i = 0; i < values.size(); ++i) {
        values[i] = 0.5f + 0.125f * static_cast<float>(i % 5);  // positive: valid variances too
    }
    keel::write_npy(weights_dir() / layer / (variable + ".npy"),
                    keel::Tensor::from_floats(shape, values));
}

void create_weights() {
    for (const char* variable : {"gamma", "beta", "moving_mean", "moving_variance"}) {
        write_variable("bn", variable, {3});
    }
    write_variable("dense", "kernel", {2, 2});
    write_variable("dense", "bias", {2});
    write_variable("conv", "kernel", {3, 3, 3, 2});
    write_variable("conv", "bias", {2});
    write_variable("dw", "depthwise_kernel", {3, 3, 3, 1});
    write_variable("dw", "bias", {3});
}

// One input per model input, unknown dimensions set to 2; empty when the inputs are not small.
std::vector<keel::Tensor> small_inputs(const keel::Model& model) {
    constexpr std::int64_t kMaxElements = 4096;
    std::vector<keel::Tensor> inputs;
    for (keel::Shape shape : model.input_shapes()) {
        for (std::int64_t& dim : shape) {
            if (dim < 0) dim = 2;
        }
        const std::int64_t count = keel::element_count(shape);
        if (count > kMaxElements) return {};
        std::vector<float> values(static_cast<std::size_t>(count));
        for (std::size_t i = 0; i < values.size(); ++i) {
            values[i] = static_cast<float>(static_cast<int>(i % 9) - 4) * 0.5f;
        }
        inputs.push_back(keel::Tensor::from_floats(shape, values));
    }
    return inputs;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    keel::fuzz::quiet_single_threaded_keel();
    create_weights();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::optional<nlohmann::json> document =
        keel::fuzz::parse_json(keel::fuzz::as_text(data, size));
    if (!document) return 0;
    try {
        const keel::Model model = keel::load_keras_model(*document, weights_dir());
        if (keel::fuzz::asks_for_large_tensors(*document)) return 0;
        const std::vector<keel::Tensor> inputs = small_inputs(model);
        if (inputs.empty()) return 0;
        model.run(inputs);
        model.run(inputs, {.training = true});
    } catch (const keel::Error& error) {
        keel::fuzz::expected_error(error);
    }
    return 0;
}
