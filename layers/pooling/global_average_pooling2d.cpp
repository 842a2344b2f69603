#include <keel/layers/pooling/global_average_pooling2d.hpp>

#include <algorithm>
#include <array>

#include <keel/engine/error.hpp>

#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"
#include "layers/pooling/global_average.hpp"
#include "layers/pooling/pooling_2d.hpp"

namespace keel {

GlobalAveragePooling2D::GlobalAveragePooling2D(GlobalAveragePooling2DOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("global_average_pooling2d") : options.name,
            options.trainable),
      options_(std::move(options)),
      engine_(std::move(engine)) {
    options_.name = name();
    const std::string where = describe();
    channels_first_ =
        layer_arguments::normalize_data_format(where, options_.data_format) == "channels_first";
    layer_arguments::require_float32(where, options_.dtype);
    layer_arguments::check_batch_input_shape(where, options_.batch_input_shape);
}

GlobalAveragePooling2D::~GlobalAveragePooling2D() = default;

std::unique_ptr<GlobalAveragePooling2D> GlobalAveragePooling2D::from_config(
    const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "GlobalAveragePooling2D");
    GlobalAveragePooling2DOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    options.data_format = layer_arguments::read_data_format(reader);
    options.keepdims = reader.boolean("keepdims", false);  // TF 1.15 has no keepdims key
    reader.finish();
    return std::make_unique<GlobalAveragePooling2D>(std::move(options), std::move(engine));
}

nlohmann::json GlobalAveragePooling2D::get_config() const {
    nlohmann::json config = layer_arguments::base_config(name(), trainable(), options_.dtype,
                                                         options_.batch_input_shape);
    config["data_format"] = channels_first_ ? "channels_first" : "channels_last";
    config["keepdims"] = options_.keepdims;
    return config;
}

Shape GlobalAveragePooling2D::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    const Shape& input = input_shapes[0];
    if (input.size() != 4) {
        throw shape_mismatch(describe(), "input shape", shape_to_string(input),
                             channels_first_ ? "rank 4: (batch, channels, rows, cols)"
                                             : "rank 4: (batch, rows, cols, channels)");
    }
    const std::int64_t channels = input[channels_first_ ? 1 : 3];
    if (!options_.keepdims) return {input[0], channels};
    return channels_first_ ? Shape{input[0], channels, 1, 1} : Shape{input[0], 1, 1, channels};
}

void GlobalAveragePooling2D::build_variables(std::span<const Shape> input_shapes) {
    infer_output_shape(input_shapes);
    layer_arguments::check_declared_input(describe(), options_.batch_input_shape, input_shapes[0]);
}

Tensor GlobalAveragePooling2D::forward(const ForwardContext& context) const {
    expect_input_count(context.inputs.size(), 1);
    const Tensor input = layer_arguments::as_float32(context.inputs[0]);
    const Shape& shape = input.shape();
    Tensor output = Tensor::uninitialized(infer_output_shape(std::span<const Shape>(&shape, 1)),
                                          DType::f32);  // every element written
    if (output.empty()) return output;
    const std::int64_t batch = shape[0];
    const std::int64_t channels = shape[channels_first_ ? 1 : 3];
    const std::int64_t height = shape[channels_first_ ? 2 : 1];
    const std::int64_t width = shape[channels_first_ ? 3 : 2];
    if (height > 0 && width > 0) {
        // One window covering the image: the pooled [N, 1, 1, C] or [N, C, 1, 1] has the
        // output's memory layout in either case.
        pooling::Geometry geometry;
        geometry.batch = batch;
        geometry.channels = channels;
        geometry.input_height = geometry.pool_height = geometry.stride_height = height;
        geometry.input_width = geometry.pool_width = geometry.stride_width = width;
        geometry.output_height = geometry.output_width = 1;
        geometry.channels_first = channels_first_;
        if (pooling::pool_on_onednn(engine_, pooling::PoolingKind::average, geometry, input,
                                    output)) {
            return output;
        }
    }
    pooling::global_average(engine_, input.data_as<float>(), output.data_as<float>(), batch,
                            channels, height * width, channels_first_);
    return output;
}

}  // namespace keel
