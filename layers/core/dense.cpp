#include <keel/layers/core/dense.hpp>

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>

#include <keel/engine/error.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/core/dense/dense_compute.hpp"
#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel {
namespace {

constexpr std::size_t kKernelIndex = 0;
constexpr std::size_t kBiasIndex = 1;

}  // namespace

struct Dense::Impl {
    Engine engine;
    DenseOptions options;
    activation::ActivationFunction activation;
    layer_arguments::WeightSettings kernel;
    layer_arguments::WeightSettings bias;
    std::int64_t input_dim = -1;  // pinned at build, as Keras' InputSpec(axes={-1: in})

    mutable std::mutex mutex;
    mutable std::string last_implementation;
};

Dense::Dense(DenseOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("dense") : options.name, options.trainable),
      impl_(std::make_unique<Impl>()) {
    const std::string where = describe();
    options.name = name();
    Impl& impl = *impl_;
    if (options.units <= 0) {
        throw invalid_argument(where, "units", std::to_string(options.units), "a positive integer");
    }
    impl.activation =
        activation::ActivationFunction::from_keras(options.activation, where, "activation");
    if (!options.activity_regularizer.is_null()) {
        throw unsupported(where, "activity_regularizer = " + options.activity_regularizer.dump(),
                          "keel implements only Keras' default (null)");
    }
    layer_arguments::require_float32(where, options.dtype);
    layer_arguments::check_batch_input_shape(where, options.batch_input_shape);
    impl.kernel = layer_arguments::resolve_weight_settings(
        where, "kernel", options.kernel_initializer, options.kernel_regularizer,
        options.kernel_constraint);
    impl.bias = layer_arguments::resolve_weight_settings(
        where, "bias", options.bias_initializer, options.bias_regularizer, options.bias_constraint);
    impl.engine = std::move(engine);
    impl.options = std::move(options);
}

Dense::~Dense() = default;

std::unique_ptr<Dense> Dense::from_config(const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "Dense");
    DenseOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    if (!reader.has("units")) {
        throw invalid_argument(reader.where(), "units", "(missing)", "a positive integer");
    }
    options.units = reader.integer("units", 0);
    options.activation = reader.identifier("activation", nullptr);
    options.use_bias = reader.boolean("use_bias", true);
    options.kernel_initializer = reader.identifier("kernel_initializer", "glorot_uniform");
    options.bias_initializer = reader.identifier("bias_initializer", "zeros");
    options.kernel_regularizer = reader.identifier("kernel_regularizer", nullptr);
    options.bias_regularizer = reader.identifier("bias_regularizer", nullptr);
    options.kernel_constraint = reader.identifier("kernel_constraint", nullptr);
    options.bias_constraint = reader.identifier("bias_constraint", nullptr);
    reader.accept_only_default("activity_regularizer", nullptr);
    // Keras 3's low-rank adaptation of the kernel.
    reader.accept_only_default("lora_rank", nullptr);
    reader.accept_only_default("lora_alpha", nullptr);
    reader.finish();
    return std::make_unique<Dense>(std::move(options), std::move(engine));
}

nlohmann::json Dense::get_config() const {
    const Impl& impl = *impl_;
    nlohmann::json config = keras::base_config(name(), trainable(), impl.options.dtype);
    config["units"] = impl.options.units;
    config["activation"] = impl.activation.to_keras();
    config["use_bias"] = impl.options.use_bias;
    layer_arguments::write_weight_settings(config, "kernel", impl.kernel);
    layer_arguments::write_weight_settings(config, "bias", impl.bias);
    config["activity_regularizer"] = nullptr;
    if (!impl.options.batch_input_shape.is_null()) {
        config["batch_input_shape"] = impl.options.batch_input_shape;
    }
    return config;
}

Shape Dense::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    const Shape& shape = input_shapes[0];
    const std::string where = describe();
    if (shape.size() < 2) {
        throw shape_mismatch(where, "input shape", shape_to_string(shape),
                             "rank >= 2 ([batch, ..., features])");
    }
    const std::int64_t features = shape.back();
    if (features < 0) {
        throw shape_mismatch(where, "input shape", shape_to_string(shape),
                             "a known last dimension (it sizes the kernel)");
    }
    if (impl_->input_dim >= 0 && features != impl_->input_dim) {
        throw shape_mismatch(where, "input shape", shape_to_string(shape),
                             "last dimension " + std::to_string(impl_->input_dim) +
                                 ", as at build (kernel shape [" +
                                 std::to_string(impl_->input_dim) + ", " +
                                 std::to_string(impl_->options.units) + "])");
    }
    Shape output = shape;
    output.back() = impl_->options.units;
    return output;
}

const DenseOptions& Dense::options() const noexcept { return impl_->options; }

std::string Dense::last_implementation() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->last_implementation;
}

void Dense::build_variables(std::span<const Shape> input_shapes) {
    infer_output_shape(input_shapes);
    Impl& impl = *impl_;
    layer_arguments::check_declared_input(describe(), impl.options.batch_input_shape,
                                          input_shapes[0]);
    const std::int64_t in = input_shapes[0].back();
    add_variable("kernel", {in, impl.options.units}, impl.kernel.initializer,
                 impl.kernel.regularizer, impl.kernel.constraint, true);
    if (impl.options.use_bias) {
        add_variable("bias", {impl.options.units}, impl.bias.initializer, impl.bias.regularizer,
                     impl.bias.constraint, true);
    }
    impl.input_dim = in;
}

Tensor Dense::forward(const ForwardContext& context) const {
    const Impl& impl = *impl_;
    const std::string where = describe();
    expect_input_count(context.inputs.size(), 1);
    if (!built()) {
        throw invalid_argument(where, "forward", "an unbuilt layer",
                               "build() or call() before forward()");
    }
    const Tensor& input = context.inputs[0];
    const Shape output_shape = infer_output_shape(std::span<const Shape>(&input.shape(), 1));
    const std::int64_t in = impl.input_dim;
    const std::int64_t units = impl.options.units;

    const float* kernel = layer_arguments::checked_variable(where, context.variables, kKernelIndex,
                                                            "kernel", {in, units})
                              .data_as<float>();
    const float* bias = impl.options.use_bias
                            ? layer_arguments::checked_variable(where, context.variables,
                                                                kBiasIndex, "bias", {units})
                                  .data_as<float>()
                            : nullptr;

    const Tensor x = layer_arguments::as_float32(input);
    Tensor y = Tensor::uninitialized(output_shape, DType::f32);  // every element is written
    if (y.empty()) return y;
    std::string implementation = dense::compute_dense(
        impl.engine, where, {in, units, impl.options.use_bias, impl.activation}, x, kernel, bias, y,
        dense::Destination::overwrite);
    std::lock_guard lock(impl.mutex);
    impl.last_implementation = std::move(implementation);
    return y;
}

}  // namespace keel
