#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/pooling/base_pooling2d.hpp>

namespace keel {

using MaxPooling2DOptions = Pooling2DOptions;

// tf.keras.layers.MaxPooling2D: the maximum over each window; 'same' padding counts as -inf
// (TensorFlow's MaxPool).
class MaxPooling2D final : public Pooling2D {
  public:
    explicit MaxPooling2D(MaxPooling2DOptions options = {}, Engine engine = default_engine());

    // From a Keras config object (TF 1.15, tf_keras 2.x or Keras 3 spelling). Unknown keys are
    // an error.
    static std::unique_ptr<MaxPooling2D> from_config(const nlohmann::json& config,
                                                     Engine engine = default_engine());

    std::string class_name() const override { return "MaxPooling2D"; }
};

}  // namespace keel
