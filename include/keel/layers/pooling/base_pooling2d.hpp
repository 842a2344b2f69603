#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

// Constructor arguments of MaxPooling2D and AveragePooling2D, with Keras' names and defaults.
struct Pooling2DOptions {
    // (pool_height, pool_width), positive. Keras' single int n is {n, n}.
    std::array<std::int64_t, 2> pool_size{2, 2};
    // nullopt = Keras' None: the strides equal pool_size. Positive (Keras accepts 0 and then
    // fails in TensorFlow's op; keel refuses it when constructing).
    std::optional<std::array<std::int64_t, 2>> strides;
    // "valid" or "same" (case-insensitive, as Keras). 'same' splits the total padding as
    // TensorFlow does: floor(total / 2) before, the rest after.
    std::string padding = "valid";
    // "channels_last" (NHWC), "channels_first" (NCHW); nullopt = Keras' None = "channels_last".
    std::optional<std::string> data_format;
    // Empty = a unique default name ("max_pooling2d", "average_pooling2d_1", ...).
    std::string name;
    bool trainable = true;
    // keel computes pooling in float32 only; another dtype is a keel::Error (unsupported).
    std::string dtype = "float32";
    // Keras' optional `batch_input_shape` (ints or nulls, batch first), checked at build.
    nlohmann::json batch_input_shape = nullptr;
};

// Keras' Pooling2D base: a window reduction over rank-4 inputs. Like Keras, only the rank is
// pinned, so the spatial size may change between calls. Runs on oneDNN's pooling primitive unless
// oneDNN offers only a reference implementation for the case, then on keel's kernel.
class Pooling2D : public Layer {
  public:
    enum class Mode {
        max,      // padding counts as -inf (TensorFlow's MaxPool)
        average,  // padding is excluded from the count (TensorFlow's AvgPool)
    };

    ~Pooling2D() override;

    nlohmann::json get_config() const override;
    Shape infer_output_shape(std::span<const Shape> input_shapes) const override;
    Tensor forward(const ForwardContext& context) const override;

    const Pooling2DOptions& options() const noexcept;
    // What computes an input of this (fully known) shape: oneDNN's impl_info_str(), or
    // "keel:pooling" where oneDNN offers only a reference implementation. For logs and tests.
    std::string implementation(const Shape& input_shape) const;

  protected:
    // `default_name` is Keras' base for unique names ("max_pooling2d").
    Pooling2D(Mode mode, std::string_view default_name, Pooling2DOptions options, Engine engine);
    // Options from a Keras config (TF 1.15, tf_keras 2.x or Keras 3 spelling); unknown keys are
    // an error naming `class_name`.
    static Pooling2DOptions options_from_config(const nlohmann::json& config,
                                                std::string_view class_name);

  private:
    void build_variables(std::span<const Shape> input_shapes) override;

    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace keel
