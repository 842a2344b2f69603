#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments, with Keras' names and defaults.
struct DenseOptions {
    std::int64_t units = 0;  // required by Keras: a positive integer
    // A Keras activation identifier ("relu", "gelu", ...) or null (= linear).
    nlohmann::json activation = nullptr;
    bool use_bias = true;
    // Keras identifiers: a name, {"class_name", "config"}, or null.
    nlohmann::json kernel_initializer = "glorot_uniform";
    nlohmann::json bias_initializer = "zeros";
    nlohmann::json kernel_regularizer = nullptr;
    nlohmann::json bias_regularizer = nullptr;
    // keel accepts only Keras' default (null): an activity regularizer is a training-loss term keel
    // does not compute.
    nlohmann::json activity_regularizer = nullptr;
    nlohmann::json kernel_constraint = nullptr;
    nlohmann::json bias_constraint = nullptr;
    // Empty = a unique default name ("dense", "dense_1", ...).
    std::string name;
    bool trainable = true;
    // keel computes this layer in float32 only; any other dtype is refused.
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (a list of ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// tf.keras.layers.Dense: activation(x · kernel + bias) over the last axis; an input [..., in]
// gives [..., units]. Variables in Keras' order: kernel (in, units), bias (units,) when use_bias.
// Runs on a oneDNN matmul with the activation fused as a post-op when oneDNN computes exactly
// that function, else keel's loops.
class Dense final : public Layer {
  public:
    // `units` has no default in Keras, so there is no default DenseOptions to construct from.
    explicit Dense(DenseOptions options, Engine engine = default_engine());
    ~Dense() override;

    // From a Keras config object (the "config" part of {"class_name", "config"}).
    static std::unique_ptr<Dense> from_config(const nlohmann::json& config,
                                              Engine engine = default_engine());

    std::string class_name() const override { return "Dense"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;

    // The options as given, with the resolved name (for graph rewrites such as folding a
    // BatchNormalization into the kernel and bias).
    const DenseOptions& options() const noexcept;

    // What the most recent forward() on any thread ran, e.g. "onednn:brg:avx512_core+eltwise" or
    // "keel:loop+keel:softmax" (for tests, logs and reports); empty before the first call.
    std::string last_implementation() const;

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace keel
