#include <keel/layers/registry.hpp>

#include <algorithm>
#include <functional>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/layers/activation/activation.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/activation/softmax.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/convolutional/depthwise_conv2d.hpp>
#include <keel/layers/core/dense.hpp>
#include <keel/layers/merging/add.hpp>
#include <keel/layers/merging/concatenate.hpp>
#include <keel/layers/merging/multiply.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/layers/pooling/average_pooling2d.hpp>
#include <keel/layers/pooling/global_average_pooling2d.hpp>
#include <keel/layers/pooling/max_pooling2d.hpp>
#include <keel/layers/reshaping/flatten.hpp>
#include <keel/layers/reshaping/reshape.hpp>

namespace keel {
namespace {

using Factory = std::function<std::unique_ptr<Layer>(const nlohmann::json&, Engine)>;

template <typename LayerClass>
Factory factory() {
    return [](const nlohmann::json& config, Engine engine) -> std::unique_ptr<Layer> {
        return LayerClass::from_config(config, std::move(engine));
    };
}

// An explicit table: self-registering statics in a static library are dropped by the linker when
// nothing references their object file.
const std::vector<std::pair<std::string, Factory>>& registry() {
    static const std::vector<std::pair<std::string, Factory>> table = {
        {"Activation", factory<Activation>()},
        {"Add", factory<Add>()},
        {"AveragePooling2D", factory<AveragePooling2D>()},
        {"BatchNormalization", factory<BatchNormalization>()},
        {"Concatenate", factory<Concatenate>()},
        {"Conv2D", factory<Conv2D>()},
        {"Dense", factory<Dense>()},
        {"DepthwiseConv2D", factory<DepthwiseConv2D>()},
        {"Flatten", factory<Flatten>()},
        {"GlobalAveragePooling2D", factory<GlobalAveragePooling2D>()},
        {"MaxPooling2D", factory<MaxPooling2D>()},
        {"Multiply", factory<Multiply>()},
        {"ReLU", factory<ReLU>()},
        {"Reshape", factory<Reshape>()},
        {"Softmax", factory<Softmax>()},
    };
    return table;
}

}  // namespace

std::unique_ptr<Layer> make_layer(std::string_view class_name, const nlohmann::json& config,
                                  Engine engine) {
    for (const auto& [name, create] : registry()) {
        if (name == class_name) return create(config, std::move(engine));
    }
    std::string known;
    for (const std::string& name : layer_class_names()) known += (known.empty() ? "" : ", ") + name;
    throw unsupported("make_layer", "layer class '" + std::string(class_name) + "'",
                      "keel implements: " + known);
}

std::vector<std::string> layer_class_names() {
    std::vector<std::string> names;
    for (const auto& entry : registry()) names.push_back(entry.first);
    std::sort(names.begin(), names.end());
    return names;
}

}  // namespace keel
