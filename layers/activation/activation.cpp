#include <keel/layers/activation/activation.hpp>

#include <utility>

#include <keel/engine/error.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel {

struct Activation::Impl {
    Engine engine;
    ActivationOptions options;
    activation::ActivationFunction function;
};

Activation::Activation(ActivationOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("activation") : options.name,
            options.trainable),
      impl_(std::make_unique<Impl>()) {
    const std::string where = describe();
    options.name = name();
    impl_->function =
        activation::ActivationFunction::from_keras(options.activation, where, "activation");
    layer_arguments::require_float32(where, options.dtype);
    layer_arguments::check_batch_input_shape(where, options.batch_input_shape);
    impl_->engine = std::move(engine);
    impl_->options = std::move(options);
}

Activation::~Activation() = default;

std::unique_ptr<Activation> Activation::from_config(const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "Activation");
    ActivationOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    if (!reader.has("activation")) {
        throw invalid_argument(reader.where(), "activation", "(missing)",
                               "an activation identifier (Activation requires one)");
    }
    options.activation = reader.identifier("activation", nullptr);
    reader.finish();
    return std::make_unique<Activation>(std::move(options), std::move(engine));
}

nlohmann::json Activation::get_config() const {
    nlohmann::json config = keras::base_config(name(), trainable(), impl_->options.dtype);
    config["activation"] = impl_->function.to_keras();
    if (!impl_->options.batch_input_shape.is_null()) {
        config["batch_input_shape"] = impl_->options.batch_input_shape;
    }
    return config;
}

Shape Activation::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    if (impl_->function.kind == activation::ActivationFunction::Kind::softmax &&
        input_shapes[0].empty()) {
        throw shape_mismatch(describe(), "input shape", "[]", "rank >= 1 for softmax");
    }
    return input_shapes[0];
}

const ActivationOptions& Activation::options() const noexcept { return impl_->options; }

void Activation::build_variables(std::span<const Shape> input_shapes) {
    infer_output_shape(input_shapes);
    layer_arguments::check_declared_input(describe(), impl_->options.batch_input_shape,
                                          input_shapes[0]);
}

Tensor Activation::forward(const ForwardContext& context) const {
    expect_input_count(context.inputs.size(), 1);
    const Tensor& input = context.inputs[0];
    infer_output_shape(std::span<const Shape>(&input.shape(), 1));
    // One pass: read the input, write the output (no copy first), in place when the input is
    // this call's own f32 copy or the caller gave it up.
    const bool converted = input.dtype() != DType::f32;
    const Tensor values = converted ? input.to(DType::f32) : input;
    Tensor output = converted || context.may_overwrite(0)
                        ? values
                        : Tensor::uninitialized(values.shape(), DType::f32);
    impl_->function.apply(impl_->engine, values, output);
    return output;
}

}  // namespace keel
