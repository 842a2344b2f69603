#include <keel/layers/convolutional/conv2d.hpp>

#include <keel/engine/error.hpp>

#include "layers/convolutional/layer_support.hpp"
#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel {

using convolutional::LayerSettings;

struct Conv2D::Impl {
    Engine engine;
    Conv2DOptions options;
    LayerSettings settings;
    layer_arguments::WeightSettings kernel;
    layer_arguments::WeightSettings bias;
    std::int64_t in_channels = 0;  // set by build

    Shape kernel_shape() const {
        return {options.kernel_size[0], options.kernel_size[1], in_channels / options.groups,
                options.filters};
    }
};

Conv2D::Conv2D(Conv2DOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("conv2d") : options.name, options.trainable),
      impl_(std::make_unique<Impl>()) {
    const std::string where = describe();
    options.name = name();
    // Keras' order: filters, then the window arguments, then groups against filters.
    if (options.filters < 1) {
        throw invalid_argument(where, "filters", std::to_string(options.filters),
                               "a positive integer");
    }
    Impl& impl = *impl_;
    impl.settings = convolutional::resolve_settings(
        where, {options.kernel_size, options.strides, options.dilation_rate, options.padding,
                options.data_format, options.activation, options.activity_regularizer,
                options.dtype, options.batch_input_shape});
    if (options.groups < 1) {
        throw invalid_argument(where, "groups", std::to_string(options.groups),
                               "a positive integer");
    }
    if (options.filters % options.groups != 0) {
        throw invalid_argument(where, "groups", std::to_string(options.groups),
                               "a divisor of filters = " + std::to_string(options.filters) +
                                   " (each group computes filters / groups output channels)");
    }
    impl.kernel = layer_arguments::resolve_weight_settings(
        where, "kernel", options.kernel_initializer, options.kernel_regularizer,
        options.kernel_constraint);
    impl.bias = layer_arguments::resolve_weight_settings(
        where, "bias", options.bias_initializer, options.bias_regularizer, options.bias_constraint);
    impl.engine = std::move(engine);
    impl.options = std::move(options);
}

Conv2D::~Conv2D() = default;

std::unique_ptr<Conv2D> Conv2D::from_config(const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "Conv2D");
    Conv2DOptions options;
    convolutional::read_common_config(reader, options);
    if (!reader.has("filters")) {
        throw invalid_argument(reader.where(), "filters", "(missing)",
                               "a positive integer (Keras requires it)");
    }
    options.filters = reader.integer("filters", 0);
    options.groups = reader.integer("groups", 1);  // TF 1.15 has no groups: 1
    options.kernel_initializer =
        reader.identifier("kernel_initializer", options.kernel_initializer);
    options.kernel_regularizer = reader.identifier("kernel_regularizer", nullptr);
    options.kernel_constraint = reader.identifier("kernel_constraint", nullptr);
    reader.accept_only_default("lora_rank", nullptr);  // Keras 3's LoRA adapter
    reader.finish();
    return std::make_unique<Conv2D>(std::move(options), std::move(engine));
}

nlohmann::json Conv2D::get_config() const {
    const Impl& impl = *impl_;
    nlohmann::json config = convolutional::common_config(impl.options, impl.settings);
    config["filters"] = impl.options.filters;
    config["groups"] = impl.options.groups;
    layer_arguments::write_weight_settings(config, "kernel", impl.kernel);
    layer_arguments::write_weight_settings(config, "bias", impl.bias);
    return config;
}

const Conv2DOptions& Conv2D::options() const noexcept { return impl_->options; }

namespace {

void check_groups(const std::string& where, std::int64_t channels, std::int64_t groups,
                  const Shape& input_shape) {
    if (channels % groups != 0) {
        throw shape_mismatch(
            where, "input channels",
            std::to_string(channels) + " (input shape " + shape_to_string(input_shape) + ")",
            "a multiple of groups = " + std::to_string(groups));
    }
}

}  // namespace

Shape Conv2D::infer_output_shape(std::span<const Shape> input_shapes) const {
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
    check_groups(where, channels, impl.options.groups, input_shape);
    return convolutional::output_shape(where, impl.settings, input_shape, impl.options.filters);
}

void Conv2D::build_variables(std::span<const Shape> input_shapes) {
    expect_input_count(input_shapes.size(), 1);
    Impl& impl = *impl_;
    const std::string where = describe();
    const Shape& input_shape = input_shapes[0];
    const std::int64_t channels = convolutional::checked_input_channels(
        where, input_shape, impl.settings, impl.options.batch_input_shape);
    check_groups(where, channels, impl.options.groups, input_shape);
    convolutional::output_shape(where, impl.settings, input_shape, impl.options.filters);
    impl.in_channels = channels;
    add_variable("kernel", impl.kernel_shape(), impl.kernel.initializer, impl.kernel.regularizer,
                 impl.kernel.constraint, true);
    if (impl.options.use_bias) {
        add_variable("bias", {impl.options.filters}, impl.bias.initializer, impl.bias.regularizer,
                     impl.bias.constraint, true);
    }
}

Tensor Conv2D::forward(const ForwardContext& context) const {
    const Impl& impl = *impl_;
    const std::string where = describe();
    expect_input_count(context.inputs.size(), 1);
    if (!built()) {
        throw invalid_argument(where, "forward", "an unbuilt layer",
                               "build() or call() before forward()");
    }
    const Tensor& kernel = layer_arguments::checked_variable(where, context.variables, 0, "kernel",
                                                             impl.kernel_shape());
    const float* bias = nullptr;
    if (impl.options.use_bias) {
        bias = layer_arguments::checked_variable(where, context.variables, 1, "bias",
                                                 {impl.options.filters})
                   .data_as<float>();
    }
    return convolutional::run_convolution(impl.engine, where, impl.settings, context.inputs[0],
                                          impl.in_channels, impl.options.filters,
                                          impl.options.groups, kernel.data_as<float>(), bias);
}

}  // namespace keel
