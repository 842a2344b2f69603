#pragma once

#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments, with Keras' names and defaults.
struct GlobalAveragePooling2DOptions {
    // "channels_last" (NHWC), "channels_first" (NCHW); nullopt = Keras' None = "channels_last".
    std::optional<std::string> data_format;
    // Keep the spatial dimensions as size 1: (batch, 1, 1, channels) or (batch, channels, 1, 1).
    bool keepdims = false;
    // Empty = a unique default name ("global_average_pooling2d", ...).
    std::string name;
    bool trainable = true;
    // keel computes GlobalAveragePooling2D in float32 only; another dtype is a keel::Error.
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// tf.keras.layers.GlobalAveragePooling2D: the mean over rows and columns of a rank-4 input, per
// image and channel (empty rows x cols gives NaN, as TensorFlow's reduce_mean). Runs on oneDNN's
// pooling primitive with one window covering the image unless oneDNN offers only a reference
// implementation for it, then on keel's kernel (sums in double, rounds once).
class GlobalAveragePooling2D final : public Layer {
  public:
    explicit GlobalAveragePooling2D(GlobalAveragePooling2DOptions options = {},
                                    Engine engine = default_engine());
    ~GlobalAveragePooling2D() override;

    // From a Keras config object (TF 1.15, tf_keras 2.x or Keras 3 spelling). Unknown keys are
    // an error.
    static std::unique_ptr<GlobalAveragePooling2D> from_config(const nlohmann::json& config,
                                                               Engine engine = default_engine());

    std::string class_name() const override { return "GlobalAveragePooling2D"; }
    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;

    const GlobalAveragePooling2DOptions& options() const noexcept { return options_; }

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    GlobalAveragePooling2DOptions options_;
    Engine engine_;
    bool channels_first_ = false;
};

}  // namespace keel
