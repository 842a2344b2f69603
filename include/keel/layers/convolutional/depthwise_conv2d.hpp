#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments of keras.layers.DepthwiseConv2D, with Keras' names and defaults.
// `kernel_size` has no default in Keras: the zeros here are rejected by the constructor.
struct DepthwiseConv2DOptions {
    std::array<std::int64_t, 2> kernel_size{0, 0};
    std::array<std::int64_t, 2> strides{1, 1};
    std::string padding = "valid";  // "valid" or "same" (any case)
    std::int64_t depth_multiplier = 1;
    // Keras' None resolves to "channels_last" (NHWC); "channels_first" is NCHW.
    std::string data_format = "channels_last";
    std::array<std::int64_t, 2> dilation_rate{1, 1};
    nlohmann::json activation = nullptr;  // a Keras activation identifier, null = linear
    bool use_bias = true;
    nlohmann::json depthwise_initializer = "glorot_uniform";
    nlohmann::json bias_initializer = "zeros";
    nlohmann::json depthwise_regularizer = nullptr;
    nlohmann::json bias_regularizer = nullptr;
    nlohmann::json activity_regularizer = nullptr;  // keel implements only null
    nlohmann::json depthwise_constraint = nullptr;
    nlohmann::json bias_constraint = nullptr;
    // Empty = a unique default name ("depthwise_conv2d", "depthwise_conv2d_1", ...).
    std::string name;
    bool trainable = true;
    std::string dtype = "float32";  // keel computes DepthwiseConv2D in float32 only
    nlohmann::json batch_input_shape = nullptr;
};

// keras.layers.DepthwiseConv2D: each input channel c convolved with its own depth_multiplier
// filters; output channel c·depth_multiplier + m. Runs as a oneDNN grouped convolution with
// groups = input channels (keel's loops where oneDNN offers only a reference implementation).
// Variables: "depthwise_kernel" (kh, kw, in, depth_multiplier) and "bias" (in·depth_multiplier,).
class DepthwiseConv2D final : public Layer {
  public:
    explicit DepthwiseConv2D(DepthwiseConv2DOptions options = {}, Engine engine = default_engine());
    ~DepthwiseConv2D() override;

    // From a Keras config object written by TF 1.15, TF 2.x / Keras 2 or Keras 3. Unknown keys
    // are an error.
    static std::unique_ptr<DepthwiseConv2D> from_config(const nlohmann::json& config,
                                                        Engine engine = default_engine());

    std::string class_name() const override { return "DepthwiseConv2D"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;
    bool returns_exclusive_storage() const noexcept override { return true; }

    // The arguments, normalized: name resolved, padding and data_format in lower case.
    const DepthwiseConv2DOptions& options() const noexcept;

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace keel
