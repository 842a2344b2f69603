#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/pooling/base_pooling2d.hpp>

namespace keel {

using AveragePooling2DOptions = Pooling2DOptions;

// tf.keras.layers.AveragePooling2D: the mean over each window; 'same' padding is excluded from the
// count (TensorFlow's AvgPool).
class AveragePooling2D final : public Pooling2D {
  public:
    explicit AveragePooling2D(AveragePooling2DOptions options = {},
                              Engine engine = default_engine());

    // From a Keras config object (TF 1.15, tf_keras 2.x or Keras 3 spelling). Unknown keys are
    // an error.
    static std::unique_ptr<AveragePooling2D> from_config(const nlohmann::json& config,
                                                         Engine engine = default_engine());

    std::string class_name() const override { return "AveragePooling2D"; }
};

}  // namespace keel
