#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/dtype.hpp>
#include <keel/engine/tensor.hpp>

namespace keel::cli {

// One call of the layer.
struct LayerRunStep {
    // Keras' `training` argument as the script gave it; nullopt = not given (inference).
    std::optional<bool> training;
    // Already converted to the script's input_dtype.
    Tensor input;
    // What the adjustment callable returns on this call: (scale, bias), float32.
    std::optional<std::pair<Tensor, Tensor>> adjustment;
};

// A layer-run script with every .npy file it names loaded. Loading is the "script" stage: any
// problem is a keel::Error thrown before a layer exists.
struct LayerRunScript {
    std::string class_name;
    // The layer's Keras config, with the script's "behavior" and (when the config has none) the
    // input dtype as "dtype" merged in.
    nlohmann::json config;
    DType input_dtype = DType::f32;
    // Values to set after build, by Keras variable name (float32).
    std::vector<std::pair<std::string, Tensor>> variables;
    // At least one.
    std::vector<LayerRunStep> steps;

    bool uses_adjustment() const;
};

// Reads and validates `path`; .npy paths inside are relative to the script's folder.
LayerRunScript load_layer_run_script(const std::filesystem::path& path);

}  // namespace keel::cli
