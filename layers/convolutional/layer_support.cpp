#include "layers/convolutional/layer_support.hpp"

#include <algorithm>
#include <cctype>

#include <keel/engine/error.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/convolutional/depthwise_conv2d.hpp>

#include "layers/keras/layer_arguments.hpp"

namespace keel::convolutional {
namespace {

std::string lower_case(std::string text) {
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return text;
}

std::string pair_text(const std::array<std::int64_t, 2>& values) {
    return "[" + std::to_string(values[0]) + ", " + std::to_string(values[1]) + "]";
}

void require_positive(const std::string& where, const char* argument,
                      const std::array<std::int64_t, 2>& values) {
    if (values[0] < 1 || values[1] < 1) {
        throw invalid_argument(where, argument, pair_text(values),
                               "two integers >= 1 (Keras: it cannot contain 0s or negatives)");
    }
}

int channel_axis(DataFormat format) { return format == DataFormat::channels_last ? 3 : 1; }

}  // namespace

LayerSettings resolve_settings(const std::string& where, CommonArguments arguments) {
    LayerSettings settings;
    require_positive(where, "kernel_size", arguments.kernel_size);
    require_positive(where, "strides", arguments.strides);
    require_positive(where, "dilation_rate", arguments.dilation_rate);
    const bool strided = arguments.strides[0] > 1 || arguments.strides[1] > 1;
    const bool dilated = arguments.dilation_rate[0] > 1 || arguments.dilation_rate[1] > 1;
    if (strided && dilated) {
        throw invalid_argument(where, "strides",
                               pair_text(arguments.strides) +
                                   " with dilation_rate = " + pair_text(arguments.dilation_rate),
                               "strides of 1 when dilation_rate > 1 (Keras: strides > 1 is not "
                               "supported in conjunction with dilation_rate > 1)");
    }
    arguments.padding = lower_case(arguments.padding);
    if (arguments.padding == "valid") {
        settings.padding = Padding::valid;
    } else if (arguments.padding == "same") {
        settings.padding = Padding::same;
    } else {
        throw invalid_argument(where, "padding", "\"" + arguments.padding + "\"",
                               "\"valid\" or \"same\" (\"causal\" is for Conv1D only)");
    }
    arguments.data_format = lower_case(arguments.data_format);
    if (arguments.data_format == "channels_last") {
        settings.data_format = DataFormat::channels_last;
    } else if (arguments.data_format == "channels_first") {
        settings.data_format = DataFormat::channels_first;
    } else {
        throw invalid_argument(where, "data_format", "\"" + arguments.data_format + "\"",
                               "\"channels_last\" or \"channels_first\"");
    }
    settings.height = {arguments.kernel_size[0], arguments.strides[0], arguments.dilation_rate[0]};
    settings.width = {arguments.kernel_size[1], arguments.strides[1], arguments.dilation_rate[1]};
    settings.activation =
        activation::ActivationFunction::from_keras(arguments.activation, where, "activation");
    if (arguments.dtype != "float32") {
        throw unsupported(where, "dtype = \"" + arguments.dtype + "\"",
                          "keel computes convolutions in float32 only");
    }
    if (!arguments.activity_regularizer.is_null()) {
        throw unsupported(where, "activity_regularizer = " + arguments.activity_regularizer.dump(),
                          "keel implements only Keras' default (null)");
    }
    const nlohmann::json& declared = arguments.batch_input_shape;
    if (!declared.is_null()) {
        bool valid = declared.is_array() && declared.size() == 4;
        for (const auto& dim : valid ? declared : nlohmann::json::array()) {
            valid = valid &&
                    (dim.is_null() || (dim.is_number_integer() && dim.get<std::int64_t>() >= 0));
        }
        if (!valid) {
            throw invalid_argument(where, "batch_input_shape", declared.dump(),
                                   "null or a list of 4 ints >= 0 or nulls (batch first)");
        }
    }
    return settings;
}

std::int64_t checked_input_channels(const std::string& where, const Shape& input_shape,
                                    const LayerSettings& settings,
                                    const nlohmann::json& batch_input_shape) {
    if (input_shape.size() != 4) {
        throw shape_mismatch(where, "input shape", shape_to_string(input_shape),
                             "a shape of rank 4 (" +
                                 std::string(settings.data_format == DataFormat::channels_last
                                                 ? "batch, rows, cols, channels"
                                                 : "batch, channels, rows, cols") +
                                 ")");
    }
    if (batch_input_shape.is_array()) {
        layer_arguments::check_declared_input(where, batch_input_shape, input_shape);
    }
    const std::int64_t channels =
        input_shape[static_cast<std::size_t>(channel_axis(settings.data_format))];
    if (channels < 0) {
        throw shape_mismatch(where, "input shape", shape_to_string(input_shape),
                             "a known channel dimension (axis " +
                                 std::to_string(channel_axis(settings.data_format)) +
                                 "): it sizes the kernel");
    }
    return channels;
}

Shape output_shape(const std::string& where, const LayerSettings& settings,
                   const Shape& input_shape, std::int64_t filters) {
    const bool last = settings.data_format == DataFormat::channels_last;
    const std::size_t row_axis = last ? 1 : 2;
    const std::int64_t rows = output_size(input_shape[row_axis], settings.height, settings.padding);
    const std::int64_t cols =
        output_size(input_shape[row_axis + 1], settings.width, settings.padding);
    const bool rows_empty = input_shape[row_axis] >= 0 && rows < 1;
    const bool cols_empty = input_shape[row_axis + 1] >= 0 && cols < 1;
    if (rows_empty || cols_empty) {
        throw shape_mismatch(where, "input shape", shape_to_string(input_shape),
                             "spatial dimensions that give an output of at least 1 (kernel_size [" +
                                 std::to_string(settings.height.kernel) + ", " +
                                 std::to_string(settings.width.kernel) + "], dilation_rate [" +
                                 std::to_string(settings.height.dilation) + ", " +
                                 std::to_string(settings.width.dilation) + "], padding '" +
                                 std::string(padding_name(settings.padding)) +
                                 "' give output rows " + std::to_string(rows) + ", cols " +
                                 std::to_string(cols) + ")");
    }
    const std::int64_t batch = input_shape[0];
    if (last) return {batch, rows, cols, filters};
    return {batch, filters, rows, cols};
}

namespace {

// run_convolution's checks on the call: the input against the build (rank 4, `in_channels`), a
// non-empty output; the problem for it.
ConvolutionProblem checked_problem(const std::string& where, const LayerSettings& settings,
                                   const Tensor& input, std::int64_t in_channels,
                                   std::int64_t filters, std::int64_t groups, bool has_bias) {
    const Shape& shape = input.shape();
    const int axis = channel_axis(settings.data_format);
    if (input.rank() != 4 || shape[static_cast<std::size_t>(axis)] != in_channels) {
        throw shape_mismatch(where, "input shape", shape_to_string(shape),
                             "rank 4 with " + std::to_string(in_channels) + " channels on axis " +
                                 std::to_string(axis) + ", as at build");
    }
    output_shape(where, settings, shape, filters);  // rejects an empty spatial output
    return make_problem(settings.data_format, shape, filters, groups, settings.height,
                        settings.width, settings.padding, has_bias);
}

}  // namespace

Tensor run_convolution(const Engine& engine, const std::string& where,
                       const LayerSettings& settings, const Tensor& input, std::int64_t in_channels,
                       std::int64_t filters, std::int64_t groups, const float* kernel,
                       const float* bias) {
    const ConvolutionProblem problem =
        checked_problem(where, settings, input, in_channels, filters, groups, bias != nullptr);
    const Tensor x = input.dtype() == DType::f32 ? input : input.to(DType::f32);
    return convolve(engine, problem, x, kernel, bias, settings.activation, where);
}

void run_convolution_and_sum(const Engine& engine, const std::string& where,
                             const LayerSettings& settings, const Tensor& input,
                             std::int64_t in_channels, std::int64_t filters, std::int64_t groups,
                             const float* kernel, const float* bias, Tensor& sum) {
    const ConvolutionProblem problem =
        checked_problem(where, settings, input, in_channels, filters, groups, bias != nullptr);
    const Tensor x = input.dtype() == DType::f32 ? input : input.to(DType::f32);
    convolve_and_sum(engine, problem, x, kernel, bias, settings.activation, sum, where);
}

std::optional<ConvolutionLayerSpec> convolution_layer_spec(const Layer& layer) {
    if (!layer.built()) return std::nullopt;
    const std::string where = layer.class_name() + " '" + layer.name() + "'";
    ConvolutionLayerSpec spec;
    const auto settings_of = [&](auto options) {
        return resolve_settings(
            where, {options.kernel_size, options.strides, options.dilation_rate, options.padding,
                    options.data_format, options.activation, options.activity_regularizer,
                    options.dtype, options.batch_input_shape});
    };
    if (const auto* conv = dynamic_cast<const Conv2D*>(&layer)) {
        spec.settings = settings_of(conv->options());
        spec.kernel_name = "kernel";
        spec.kernel_shape = conv->variable("kernel").shape();
        spec.groups = conv->options().groups;
        // (kh, kw, in/groups, filters)
        spec.in_channels = spec.kernel_shape[2] * spec.groups;
        spec.filters = spec.kernel_shape[3];
        spec.use_bias = conv->options().use_bias;
        return spec;
    }
    if (const auto* depthwise = dynamic_cast<const DepthwiseConv2D*>(&layer)) {
        spec.settings = settings_of(depthwise->options());
        spec.kernel_name = "depthwise_kernel";
        spec.kernel_shape = depthwise->variable("depthwise_kernel").shape();
        // (kh, kw, in, depth_multiplier): a grouped convolution with one group per input channel.
        spec.in_channels = spec.kernel_shape[2];
        spec.groups = spec.in_channels;
        spec.filters = spec.in_channels * spec.kernel_shape[3];
        spec.use_bias = depthwise->options().use_bias;
        return spec;
    }
    return std::nullopt;
}

}  // namespace keel::convolutional
