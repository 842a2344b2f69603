#include <keel/layers/convolutional/depthwise_conv2d.hpp>

#include <keel/engine/error.hpp>

#include "layers/convolutional/layer_support.hpp"
#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel {

using convolutional::LayerSettings;

// A depthwise convolution is the grouped convolution with groups = input channels and
// filters = input channels · depth_multiplier: the kernel (kh, kw, in, multiplier) holds exactly
// the bytes of that convolution's (kh, kw, 1, in·multiplier) HWIO kernel, output channel
// c·multiplier + m in both.
struct DepthwiseConv2D::Impl {
    Engine engine;
    DepthwiseConv2DOptions options;
    LayerSettings settings;
    layer_arguments::WeightSettings depthwise;
    layer_arguments::WeightSettings bias;
    std::int64_t in_channels = 0;  // set by build

    std::int64_t filters() const { return in_channels * options.depth_multiplier; }
    Shape kernel_shape() const {
        return {options.kernel_size[0], options.kernel_size[1], in_channels,
                options.depth_multiplier};
    }
};

DepthwiseConv2D::DepthwiseConv2D(DepthwiseConv2DOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("depthwise_conv2d") : options.name,
            options.trainable),
      impl_(std::make_unique<Impl>()) {
    const std::string where = describe();
    options.name = name();
    Impl& impl = *impl_;
    impl.settings = convolutional::resolve_settings(
        where, {options.kernel_size, options.strides, options.dilation_rate, options.padding,
                options.data_format, options.activation, options.activity_regularizer,
                options.dtype, options.batch_input_shape});
    if (options.depth_multiplier < 1) {
        throw invalid_argument(where, "depth_multiplier", std::to_string(options.depth_multiplier),
                               "a positive integer");
    }
    impl.depthwise = layer_arguments::resolve_weight_settings(
        where, "depthwise", options.depthwise_initializer, options.depthwise_regularizer,
        options.depthwise_constraint);
    impl.bias = layer_arguments::resolve_weight_settings(
        where, "bias", options.bias_initializer, options.bias_regularizer, options.bias_constraint);
    impl.engine = std::move(engine);
    impl.options = std::move(options);
}

DepthwiseConv2D::~DepthwiseConv2D() = default;

std::unique_ptr<DepthwiseConv2D> DepthwiseConv2D::from_config(const nlohmann::json& config,
                                                              Engine engine) {
    keras::LayerConfig reader(config, "DepthwiseConv2D");
    DepthwiseConv2DOptions options;
    convolutional::read_common_config(reader, options);
    options.depth_multiplier = reader.integer("depth_multiplier", 1);
    options.depthwise_initializer =
        reader.identifier("depthwise_initializer", options.depthwise_initializer);
    options.depthwise_regularizer = reader.identifier("depthwise_regularizer", nullptr);
    options.depthwise_constraint = reader.identifier("depthwise_constraint", nullptr);
    // Keras 2 inherits Conv's get_config and writes groups = 1 (it cannot be anything else).
    reader.accept_only_default("groups", 1);
    reader.finish();
    return std::make_unique<DepthwiseConv2D>(std::move(options), std::move(engine));
}

nlohmann::json DepthwiseConv2D::get_config() const {
    const Impl& impl = *impl_;
    nlohmann::json config = convolutional::common_config(impl.options, impl.settings);
    config["depth_multiplier"] = impl.options.depth_multiplier;
    layer_arguments::write_weight_settings(config, "depthwise", impl.depthwise);
    layer_arguments::write_weight_settings(config, "bias", impl.bias);
    return config;
}

const DepthwiseConv2DOptions& DepthwiseConv2D::options() const noexcept { return impl_->options; }

Shape DepthwiseConv2D::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    const Impl& impl = *impl_;
    const std::string where = describe();
    const Shape& input_shape = input_shapes[0];
    const std::int64_t channels = convolutional::checked_input_channels(
        where, input_shape, impl.settings, impl.options.batch_input_shape);
    if (built() && channels != impl.in_channels) {
        throw shape_mismatch(where, "input shape", shape_to_string(input_shape),
                             std::to_string(impl.in_channels) + " channels, as at build");
    }
    return convolutional::output_shape(where, impl.settings, input_shape,
                                       channels * impl.options.depth_multiplier);
}

void DepthwiseConv2D::build_variables(std::span<const Shape> input_shapes) {
    expect_input_count(input_shapes.size(), 1);
    Impl& impl = *impl_;
    const std::string where = describe();
    const Shape& input_shape = input_shapes[0];
    const std::int64_t channels = convolutional::checked_input_channels(
        where, input_shape, impl.settings, impl.options.batch_input_shape);
    convolutional::output_shape(where, impl.settings, input_shape,
                                channels * impl.options.depth_multiplier);
    impl.in_channels = channels;
    add_variable("depthwise_kernel", impl.kernel_shape(), impl.depthwise.initializer,
                 impl.depthwise.regularizer, impl.depthwise.constraint, true);
    if (impl.options.use_bias) {
        add_variable("bias", {impl.filters()}, impl.bias.initializer, impl.bias.regularizer,
                     impl.bias.constraint, true);
    }
}

Tensor DepthwiseConv2D::forward(const ForwardContext& context) const {
    const Impl& impl = *impl_;
    const std::string where = describe();
    expect_input_count(context.inputs.size(), 1);
    if (!built()) {
        throw invalid_argument(where, "forward", "an unbuilt layer",
                               "build() or call() before forward()");
    }
    const Tensor& kernel = layer_arguments::checked_variable(
        where, context.variables, 0, "depthwise_kernel", impl.kernel_shape());
    const float* bias = nullptr;
    if (impl.options.use_bias) {
        bias =
            layer_arguments::checked_variable(where, context.variables, 1, "bias", {impl.filters()})
                .data_as<float>();
    }
    return convolutional::run_convolution(impl.engine, where, impl.settings, context.inputs[0],
                                          impl.in_channels, impl.filters(), impl.in_channels,
                                          kernel.data_as<float>(), bias);
}

}  // namespace keel
