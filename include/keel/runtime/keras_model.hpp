#pragma once

#include <filesystem>

#include <nlohmann/json_fwd.hpp>

#include <keel/engine/engine.hpp>
#include <keel/runtime/graph_builder.hpp>
#include <keel/runtime/model.hpp>

namespace keel {

// Builds a model from a Keras functional-model config (what model.to_json() writes) in the TF 1.15
// ("Model", batch_input_shape, nested-list inbound_nodes), TF 2.x / Keras 2.13 ("Functional",
// module, registered_name, build_config) and Keras 3 (batch_shape, {"args", "kwargs"} inbound
// nodes, dtype policies) spellings, and reads every variable from
// `weights_dir/<layer name>/<variable name>.npy` (Keras names and layouts: Conv2D kernel HWIO,
// Dense (in, out), ...). An unsupported layer class or argument, a reference to an unknown layer,
// a cycle, and a missing or mis-shaped weight file are keel::Errors naming the layer (and the file
// and expected shape).
Model load_keras_model(const nlohmann::json& config, const std::filesystem::path& weights_dir,
                       const Engine& engine = default_engine(), CompileOptions options = {});
// Reads the config from a file first.
Model load_keras_model(const std::filesystem::path& config_file,
                       const std::filesystem::path& weights_dir,
                       const Engine& engine = default_engine(), CompileOptions options = {});

// Writes the model back in the same format: a Keras 2 functional config ("Functional",
// nested-list inbound nodes) and every variable's current value as
// `weights_dir/<layer>/<variable>.npy` (float32).
void save_keras_model(const Model& model, const std::filesystem::path& config_file,
                      const std::filesystem::path& weights_dir);

}  // namespace keel
