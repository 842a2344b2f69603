// libFuzzer harness for keel's Keras layer configs (make_layer and every layer's from_config).
//
// Input: a first line "<class name>[ <shape>[;<shape>...]]", then the config JSON. Shapes are
// comma-separated dimensions in [-1, 8] (-1: unknown until run time); without one, the layer is
// built on [2, 5, 5, 3] (twice for the merging layers). A config keel accepts must then build (or
// refuse with a keel::Error), run on a small input in inference and training mode, and survive the
// get_config() round trip: make_layer(get_config()) gives a layer with the same config.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/layers/registry.hpp>

#include "fuzz/fuzz_support.hpp"

namespace {

// "2,5,-1" → {2, 5, -1}; nullopt for anything else (the input is then skipped).
std::optional<keel::Shape> parse_shape(std::string_view text) {
    keel::Shape shape;
    while (!text.empty()) {
        const std::size_t comma = text.find(',');
        const std::string_view token = text.substr(0, comma);
        if (token == "-1") {
            shape.push_back(-1);
        } else if (token.size() == 1 && token[0] >= '0' && token[0] <= '8') {
            shape.push_back(token[0] - '0');
        } else {
            return std::nullopt;
        }
        if (comma == std::string_view::npos) break;
        text.remove_prefix(comma + 1);
    }
    if (shape.size() > static_cast<std::size_t>(keel::kMaxRank)) return std::nullopt;
    return shape;
}

std::optional<std::vector<keel::Shape>> parse_shapes(std::string_view text,
                                                     std::string_view class_name) {
    std::vector<keel::Shape> shapes;
    if (text.empty()) {
        const bool merging =
            class_name == "Add" || class_name == "Multiply" || class_name == "Concatenate";
        shapes.assign(merging ? 2 : 1, keel::Shape{2, 5, 5, 3});
        return shapes;
    }
    while (true) {
        const std::size_t separator = text.find(';');
        const std::optional<keel::Shape> shape = parse_shape(text.substr(0, separator));
        if (!shape) return std::nullopt;
        shapes.push_back(*shape);
        if (separator == std::string_view::npos) return shapes;
        text.remove_prefix(separator + 1);
    }
}

// A small deterministic input of `shape`, the unknown dimensions set to 2.
keel::Tensor sample_input(keel::Shape shape, std::size_t seed) {
    for (std::int64_t& dim : shape) {
        if (dim < 0) dim = 2;
    }
    std::vector<float> values(static_cast<std::size_t>(keel::element_count(shape)));
    for (std::size_t i = 0; i < values.size(); ++i) {
        values[i] = static_cast<float>(static_cast<int>((i * 7 + seed * 3) % 11) - 5) * 0.25f;
    }
    return keel::Tensor::from_floats(shape, values);
}

[[noreturn]] void fail(const char* what, const nlohmann::json& first,
                       const nlohmann::json& second) {
    std::fprintf(stderr, "layer_config_fuzzer: %s\n  first:  %s\n  second: %s\n", what,
                 first.dump().c_str(), second.dump().c_str());
    std::abort();
}

void exercise(std::string_view class_name, const std::vector<keel::Shape>& shapes,
              const nlohmann::json& config) {
    const std::unique_ptr<keel::Layer> layer = keel::make_layer(class_name, config);
    const nlohmann::json saved = layer->get_config();
    const std::unique_ptr<keel::Layer> restored = keel::make_layer(class_name, saved);
    if (restored->get_config() != saved)
        fail("get_config() round trip differs", saved, restored->get_config());
    if (keel::fuzz::asks_for_large_tensors(config)) return;

    layer->build(shapes);
    std::vector<keel::Tensor> inputs;
    for (std::size_t i = 0; i < shapes.size(); ++i) inputs.push_back(sample_input(shapes[i], i));
    layer->call(inputs, {.training = false});
    layer->call(inputs, {.training = true});
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    keel::fuzz::quiet_single_threaded_keel();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text = keel::fuzz::as_text(data, size);
    const std::size_t newline = text.find('\n');
    if (newline == std::string_view::npos) return 0;
    const std::string_view first_line = text.substr(0, newline);
    const std::size_t space = first_line.find(' ');
    const std::string_view class_name = first_line.substr(0, space);
    const std::optional<std::vector<keel::Shape>> shapes = parse_shapes(
        space == std::string_view::npos ? std::string_view() : first_line.substr(space + 1),
        class_name);
    const std::optional<nlohmann::json> config = keel::fuzz::parse_json(text.substr(newline + 1));
    if (!shapes || !config) return 0;
    try {
        exercise(class_name, *shapes, *config);
    } catch (const keel::Error& error) {
        keel::fuzz::expected_error(error);
    }
    return 0;
}
