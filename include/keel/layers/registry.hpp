#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// A layer from its Keras class name and config (the two halves of {"class_name", "config"}).
// An unknown class is a keel::Error listing the classes keel has.
std::unique_ptr<Layer> make_layer(std::string_view class_name, const nlohmann::json& config,
                                  Engine engine = default_engine());

// The Keras class names make_layer knows, sorted.
std::vector<std::string> layer_class_names();

}  // namespace keel
