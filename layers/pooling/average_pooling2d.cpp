#include <keel/layers/pooling/average_pooling2d.hpp>

#include <keel/engine/error.hpp>

#include "layers/keras/layer_config.hpp"
#include "layers/pooling/layer_arguments.hpp"
#include "layers/pooling/pooling_2d.hpp"

namespace keel {

struct AveragePooling2D::Impl {
    AveragePooling2DOptions options;
    Engine engine;
    pooling::Window window;
};

AveragePooling2D::AveragePooling2D(AveragePooling2DOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("average_pooling2d") : options.name,
            options.trainable),
      impl_(std::make_unique<Impl>()) {
    options.name = name();
    const std::string where = describe();
    impl_->window = pooling::resolve_window(where, options.pool_size, options.strides,
                                            options.padding, options.data_format);
    layer_arguments::require_float32(where, options.dtype);
    layer_arguments::check_batch_input_shape(where, options.batch_input_shape);
    impl_->options = std::move(options);
    impl_->engine = std::move(engine);
}

AveragePooling2D::~AveragePooling2D() = default;

std::unique_ptr<AveragePooling2D> AveragePooling2D::from_config(const nlohmann::json& config,
                                                                Engine engine) {
    keras::LayerConfig reader(config, "AveragePooling2D");
    AveragePooling2DOptions options;
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
    return std::make_unique<AveragePooling2D>(std::move(options), std::move(engine));
}

nlohmann::json AveragePooling2D::get_config() const {
    nlohmann::json config = layer_arguments::base_config(name(), trainable(), impl_->options.dtype,
                                                         impl_->options.batch_input_shape);
    pooling::write_config(config, impl_->window);
    return config;
}

const AveragePooling2DOptions& AveragePooling2D::options() const noexcept { return impl_->options; }

Shape AveragePooling2D::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    return pooling::pooled_shape(describe(), impl_->window, input_shapes[0]);
}

void AveragePooling2D::build_variables(std::span<const Shape> input_shapes) {
    infer_output_shape(input_shapes);
    layer_arguments::check_declared_input(describe(), impl_->options.batch_input_shape,
                                          input_shapes[0]);
}

std::string AveragePooling2D::implementation(const Shape& input_shape) const {
    const pooling::Geometry geometry =
        pooling::make_geometry(describe(), impl_->window, input_shape);
    return pooling::implementation(impl_->engine, pooling::PoolingKind::average, geometry);
}

Tensor AveragePooling2D::forward(const ForwardContext& context) const {
    expect_input_count(context.inputs.size(), 1);
    const Tensor input = layer_arguments::as_float32(context.inputs[0]);
    const pooling::Geometry geometry =
        pooling::make_geometry(describe(), impl_->window, input.shape());
    return pooling::pool(impl_->engine, pooling::PoolingKind::average, geometry, input);
}

}  // namespace keel
