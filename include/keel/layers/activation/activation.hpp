#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments, with Keras' names and defaults.
struct ActivationOptions {
    // A Keras activation identifier: "relu", "relu6", "sigmoid", "tanh", "gelu", "swish"/"silu",
    // "softmax", "elu", "softplus", "exponential", "linear", or null (= linear, as Keras'
    // activations.get(None)).
    nlohmann::json activation = nullptr;
    // Empty = a unique default name ("activation", "activation_1", ...).
    std::string name;
    bool trainable = true;
    // keel computes this layer in float32 only; any other dtype is refused.
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (a list of ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// tf.keras.layers.Activation: applies an activation function elementwise (softmax: over the last
// axis). The output has the input's shape, in float32.
class Activation final : public Layer {
  public:
    explicit Activation(ActivationOptions options = {}, Engine engine = default_engine());
    ~Activation() override;

    // From a Keras config object (the "config" part of {"class_name", "config"}).
    static std::unique_ptr<Activation> from_config(const nlohmann::json& config,
                                                   Engine engine = default_engine());

    std::string class_name() const override { return "Activation"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;
    bool returns_exclusive_storage() const noexcept override { return true; }

    const ActivationOptions& options() const noexcept;

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace keel
