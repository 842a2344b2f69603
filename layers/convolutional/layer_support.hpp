#pragma once

// Internal: what Conv2D and DepthwiseConv2D share as Keras layers — argument validation (Keras'
// constructor and build checks), the common config keys, shape inference and the checked call
// into convolve().

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/engine.hpp>
#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/layers/layer.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/convolutional/convolution.hpp"
#include "layers/convolutional/tf_padding.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel::convolutional {

// The validated window, padding, layout and activation of a convolution layer.
struct LayerSettings {
    Window height;
    Window width;
    Padding padding = Padding::valid;
    DataFormat data_format = DataFormat::channels_last;
    activation::ActivationFunction activation;
};

// The arguments both layers take, as the user gave them (strings normalized in place).
struct CommonArguments {
    std::array<std::int64_t, 2>& kernel_size;
    std::array<std::int64_t, 2>& strides;
    std::array<std::int64_t, 2>& dilation_rate;
    std::string& padding;
    std::string& data_format;
    const nlohmann::json& activation;
    const nlohmann::json& activity_regularizer;
    const std::string& dtype;
    const nlohmann::json& batch_input_shape;
};

// Keras' constructor checks on the common arguments, in Keras' order: kernel_size, strides and
// dilation_rate positive, not strides > 1 together with dilation_rate > 1, padding 'valid' or
// 'same', data_format, the activation; keel's: float32 only, activity_regularizer null, a
// well-formed batch_input_shape. Lower-cases padding and data_format in `arguments`.
LayerSettings resolve_settings(const std::string& where, CommonArguments arguments);

// Build checks on the input shape: rank 4, a known channel count, compatible with a declared
// batch_input_shape (null = none). Returns the channel count.
std::int64_t checked_input_channels(const std::string& where, const Shape& input_shape,
                                    const LayerSettings& settings,
                                    const nlohmann::json& batch_input_shape);

// The output shape for `input_shape` (unknown dimensions stay -1). A known spatial output below
// 1 is an error (Keras: "one of the dimensions in the output is <= 0").
Shape output_shape(const std::string& where, const LayerSettings& settings,
                   const Shape& input_shape, std::int64_t filters);

// The call: checks the input against the build (rank 4, `in_channels`), converts it to f32,
// sizes the problem and convolves. `kernel` holds the problem's (kh, kw, in/groups, filters)
// HWIO values, `bias` `filters` floats or null.
Tensor run_convolution(const Engine& engine, const std::string& where,
                       const LayerSettings& settings, const Tensor& input, std::int64_t in_channels,
                       std::int64_t filters, std::int64_t groups, const float* kernel,
                       const float* bias);

// run_convolution with `sum` added before the activation (convolve_and_sum): `sum` holds the
// addend on entry (f32, the output's shape, storage the caller lets this overwrite and not the
// input's) and activation(convolution + bias + addend) on return.
void run_convolution_and_sum(const Engine& engine, const std::string& where,
                             const LayerSettings& settings, const Tensor& input,
                             std::int64_t in_channels, std::int64_t filters, std::int64_t groups,
                             const float* kernel, const float* bias, Tensor& sum);

// What run_convolution needs to compute a built Conv2D's or DepthwiseConv2D's convolution, read
// from the layer's public options and variable shapes: for graph rewrites that fuse something into
// that convolution and hand in its variables (or weights derived from them) themselves.
struct ConvolutionLayerSpec {
    LayerSettings settings;  // the layer's own activation included
    std::int64_t in_channels = 0;
    std::int64_t filters = 0;
    std::int64_t groups = 1;
    std::string kernel_name;  // "kernel" (Conv2D) or "depthwise_kernel" (DepthwiseConv2D)
    Shape kernel_shape;       // variable 0
    bool use_bias = true;     // variable 1 is the bias
};

// The spec of `layer` when it is a built Conv2D or DepthwiseConv2D; nullopt otherwise.
std::optional<ConvolutionLayerSpec> convolution_layer_spec(const Layer& layer);

// Keras config keys both layers read: kernel_size (required), strides, padding, data_format
// (null = channels_last), dilation_rate, activation, use_bias, bias_*, activity_regularizer,
// name, trainable, dtype, batch_input_shape. Fills `options` (Conv2DOptions or
// DepthwiseConv2DOptions).
template <typename Options>
void read_common_config(keras::LayerConfig& config, Options& options) {
    options.name = config.name();
    options.trainable = config.trainable();
    options.dtype = config.dtype();
    options.batch_input_shape = config.batch_input_shape();
    if (!config.has("kernel_size")) {
        throw invalid_argument(config.where(), "kernel_size", "(missing)",
                               "an int or a list of 2 ints (Keras requires it)");
    }
    const auto pair = [&](const char* key, std::array<std::int64_t, 2> fallback) {
        const auto values = config.int_tuple(key, {fallback[0], fallback[1]}, 2);
        return std::array<std::int64_t, 2>{values[0], values[1]};
    };
    options.kernel_size = pair("kernel_size", options.kernel_size);
    options.strides = pair("strides", options.strides);
    options.dilation_rate = pair("dilation_rate", options.dilation_rate);
    options.padding = config.string("padding", options.padding);
    const auto data_format = config.take("data_format");
    if (data_format && !data_format->is_null()) {
        if (!data_format->is_string()) {
            throw invalid_argument(config.where(), "data_format", data_format->dump(),
                                   "\"channels_last\", \"channels_first\" or null");
        }
        options.data_format = data_format->template get<std::string>();
    }
    options.activation = config.identifier("activation", nullptr);
    options.use_bias = config.boolean("use_bias", options.use_bias);
    options.bias_initializer = config.identifier("bias_initializer", options.bias_initializer);
    options.bias_regularizer = config.identifier("bias_regularizer", nullptr);
    options.bias_constraint = config.identifier("bias_constraint", nullptr);
    options.activity_regularizer = config.identifier("activity_regularizer", nullptr);
}

// The keys read_common_config reads, as Keras 2 writes them (activation by its identifier).
template <typename Options>
nlohmann::json common_config(const Options& options, const LayerSettings& settings) {
    nlohmann::json config = keras::base_config(options.name, options.trainable, options.dtype);
    if (!options.batch_input_shape.is_null()) {
        config["batch_input_shape"] = options.batch_input_shape;
    }
    config["kernel_size"] = options.kernel_size;
    config["strides"] = options.strides;
    config["padding"] = options.padding;
    config["data_format"] = options.data_format;
    config["dilation_rate"] = options.dilation_rate;
    config["activation"] = settings.activation.to_keras();
    config["use_bias"] = options.use_bias;
    config["activity_regularizer"] = nullptr;
    return config;
}

}  // namespace keel::convolutional
