#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments, with Keras' names and defaults (Add has only the base Layer's).
struct AddOptions {
    // Empty = a unique default name ("add", "add_1", ...).
    std::string name;
    bool trainable = true;
    // keel computes Add in float32 only; another dtype is a keel::Error (unsupported).
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// tf.keras.layers.Add: the elementwise sum of one or more inputs of equal shape, computed
// left to right in float32 as Keras does (((x0 + x1) + x2) ...), so results are bit-identical to
// TensorFlow's. Unknown (-1) dimensions are compatible with any size at shape inference; at run
// time the shapes must be equal. Keras' broadcasting of size-1 dimensions and of inputs of
// different ranks is not implemented: such inputs are a keel::Error (shape_mismatch).
class Add final : public Layer {
  public:
    explicit Add(AddOptions options = {}, Engine engine = default_engine());
    ~Add() override;

    // From a Keras config object (TF 1.15, tf_keras 2.x or Keras 3 spelling). Unknown keys are
    // an error.
    static std::unique_ptr<Add> from_config(const nlohmann::json& config,
                                            Engine engine = default_engine());

    std::string class_name() const override { return "Add"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;
    bool returns_exclusive_storage() const noexcept override { return true; }

    const AddOptions& options() const noexcept { return options_; }

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    AddOptions options_;
    Engine engine_;
};

}  // namespace keel
