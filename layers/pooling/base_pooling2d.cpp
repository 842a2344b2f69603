#include <keel/layers/pooling/base_pooling2d.hpp>

#include <keel/engine/error.hpp>

#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"
#include "layers/pooling/pooling_2d.hpp"

namespace keel {

struct Pooling2D::Impl {
    pooling::PoolingKind kind = pooling::PoolingKind::max;
    Pooling2DOptions options;
    Engine engine;
    pooling::Window window;
};

Pooling2D::Pooling2D(Mode mode, std::string_view default_name, Pooling2DOptions options,
                     Engine engine)
    : Layer(options.name.empty() ? unique_layer_name(default_name) : options.name,
            options.trainable),
      impl_(std::make_unique<Impl>()) {
    options.name = name();
    // The class name is not available from a base-class constructor (virtual dispatch): spell it.
    const std::string where =
        std::string(mode == Mode::max ? "MaxPooling2D" : "AveragePooling2D") + " '" + name() + "'";
    impl_->kind = mode == Mode::max ? pooling::PoolingKind::max : pooling::PoolingKind::average;
    impl_->window = pooling::resolve_window(where, options.pool_size, options.strides,
                                            options.padding, options.data_format);
    layer_arguments::require_float32(where, options.dtype);
    layer_arguments::check_batch_input_shape(where, options.batch_input_shape);
    impl_->options = std::move(options);
    impl_->engine = std::move(engine);
}

Pooling2D::~Pooling2D() = default;

Pooling2DOptions Pooling2D::options_from_config(const nlohmann::json& config,
                                                std::string_view class_name) {
    keras::LayerConfig reader(config, class_name);
    Pooling2DOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    pooling::ConfigArguments arguments = pooling::read_config(reader);
    options.pool_size = arguments.pool_size;
    options.strides = arguments.strides;
    options.padding = std::move(arguments.padding);
    options.data_format = std::move(arguments.data_format);
    reader.finish();
    return options;
}

nlohmann::json Pooling2D::get_config() const {
    nlohmann::json config = layer_arguments::base_config(name(), trainable(), impl_->options.dtype,
                                                         impl_->options.batch_input_shape);
    pooling::write_config(config, impl_->window);
    return config;
}

const Pooling2DOptions& Pooling2D::options() const noexcept { return impl_->options; }

Shape Pooling2D::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    return pooling::pooled_shape(describe(), impl_->window, input_shapes[0]);
}

void Pooling2D::build_variables(std::span<const Shape> input_shapes) {
    infer_output_shape(input_shapes);
    layer_arguments::check_declared_input(describe(), impl_->options.batch_input_shape,
                                          input_shapes[0]);
}

std::string Pooling2D::implementation(const Shape& input_shape) const {
    const pooling::Geometry geometry =
        pooling::make_geometry(describe(), impl_->window, input_shape);
    return pooling::implementation(impl_->engine, impl_->kind, geometry);
}

Tensor Pooling2D::forward(const ForwardContext& context) const {
    expect_input_count(context.inputs.size(), 1);
    const Tensor input = layer_arguments::as_float32(context.inputs[0]);
    const pooling::Geometry geometry =
        pooling::make_geometry(describe(), impl_->window, input.shape());
    return pooling::pool(impl_->engine, impl_->kind, geometry, input);
}

}  // namespace keel
