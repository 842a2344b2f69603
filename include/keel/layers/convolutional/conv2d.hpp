#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments of keras.layers.Conv2D, with Keras' names and defaults. `filters` and
// `kernel_size` have no default in Keras: the zeros here are rejected by the constructor.
struct Conv2DOptions {
    std::int64_t filters = 0;
    std::array<std::int64_t, 2> kernel_size{0, 0};
    std::array<std::int64_t, 2> strides{1, 1};
    std::string padding = "valid";  // "valid" or "same" (any case)
    // Keras' None resolves to image_data_format(), "channels_last" (NHWC); "channels_first" is
    // NCHW. Both run on the tensor as it is, without transposing copies.
    std::string data_format = "channels_last";
    std::array<std::int64_t, 2> dilation_rate{1, 1};
    std::int64_t groups = 1;
    // A Keras activation identifier: "relu", "gelu", ..., or null (= linear).
    nlohmann::json activation = nullptr;
    bool use_bias = true;
    // Keras identifiers: a name, {"class_name", "config"}, or null.
    nlohmann::json kernel_initializer = "glorot_uniform";
    nlohmann::json bias_initializer = "zeros";
    nlohmann::json kernel_regularizer = nullptr;
    nlohmann::json bias_regularizer = nullptr;
    nlohmann::json activity_regularizer = nullptr;  // keel implements only null
    nlohmann::json kernel_constraint = nullptr;
    nlohmann::json bias_constraint = nullptr;
    // Empty = a unique default name ("conv2d", "conv2d_1", ...).
    std::string name;
    bool trainable = true;
    std::string dtype = "float32";  // keel computes Conv2D in float32 only
    // Keras' optional batch_input_shape (a list of ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// keras.layers.Conv2D: a 2-D convolution (cross-correlation, as TensorFlow computes it) with
// TensorFlow's 'valid'/'same' padding, strides, dilation, groups, bias and activation, on oneDNN
// convolution primitives (keel's own loops where oneDNN offers only a reference implementation).
// Variables: "kernel" (kh, kw, in/groups, filters) and "bias" (filters,).
class Conv2D final : public Layer {
  public:
    explicit Conv2D(Conv2DOptions options = {}, Engine engine = default_engine());
    ~Conv2D() override;

    // From a Keras config object (the "config" part of {"class_name", "config"}) written by
    // TF 1.15, TF 2.x / Keras 2 or Keras 3. Unknown keys are an error.
    static std::unique_ptr<Conv2D> from_config(const nlohmann::json& config,
                                               Engine engine = default_engine());

    std::string class_name() const override { return "Conv2D"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;
    bool returns_exclusive_storage() const noexcept override { return true; }

    // The arguments, normalized: name resolved, padding and data_format in lower case.
    const Conv2DOptions& options() const noexcept;

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace keel
