#include <keel/layers/activation/relu.hpp>

#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

#include <keel/engine/error.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel {
namespace {

std::string format_number(double value) {
    std::ostringstream text;
    text.precision(17);
    text << value;
    return text.str();
}

// Keras: "<argument> of a ReLU layer cannot be a negative value". keel also refuses NaN and
// infinities, which Keras' comparisons let through into NaN outputs.
void require_non_negative(double value, const char* argument, const std::string& where) {
    if (!(value >= 0.0) || !std::isfinite(value)) {
        throw invalid_argument(where, argument, format_number(value), "a finite value >= 0");
    }
}

}  // namespace

struct ReLU::Impl {
    Engine engine;
    ReLUOptions options;
    activation::ActivationFunction function;
};

ReLU::ReLU(ReLUOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("re_lu") : options.name, options.trainable),
      impl_(std::make_unique<Impl>()) {
    const std::string where = describe();
    options.name = name();
    if (options.max_value) require_non_negative(*options.max_value, "max_value", where);
    require_non_negative(options.negative_slope, "negative_slope", where);
    require_non_negative(options.threshold, "threshold", where);
    layer_arguments::require_float32(where, options.dtype);
    layer_arguments::check_batch_input_shape(where, options.batch_input_shape);
    activation::ActivationFunction& function = impl_->function;
    function.kind = activation::ActivationFunction::Kind::relu;
    // Keras casts the parameters to floatx (float32) before computing.
    function.negative_slope = static_cast<float>(options.negative_slope);
    function.threshold = static_cast<float>(options.threshold);
    function.max_value = options.max_value ? static_cast<float>(*options.max_value)
                                           : std::numeric_limits<double>::infinity();
    impl_->engine = std::move(engine);
    impl_->options = std::move(options);
}

ReLU::~ReLU() = default;

std::unique_ptr<ReLU> ReLU::from_config(const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "ReLU");
    ReLUOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    options.max_value = reader.optional_number("max_value");
    options.negative_slope = reader.number("negative_slope", 0.0);
    options.threshold = reader.number("threshold", 0.0);
    reader.finish();
    return std::make_unique<ReLU>(std::move(options), std::move(engine));
}

nlohmann::json ReLU::get_config() const {
    const ReLUOptions& options = impl_->options;
    nlohmann::json config = keras::base_config(name(), trainable(), options.dtype);
    config["max_value"] = options.max_value ? nlohmann::json(*options.max_value) : nullptr;
    config["negative_slope"] = options.negative_slope;
    config["threshold"] = options.threshold;
    if (!options.batch_input_shape.is_null()) {
        config["batch_input_shape"] = options.batch_input_shape;
    }
    return config;
}

Shape ReLU::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    return input_shapes[0];
}

const ReLUOptions& ReLU::options() const noexcept { return impl_->options; }

void ReLU::build_variables(std::span<const Shape> input_shapes) {
    expect_input_count(input_shapes.size(), 1);
    layer_arguments::check_declared_input(describe(), impl_->options.batch_input_shape,
                                          input_shapes[0]);
}

Tensor ReLU::forward(const ForwardContext& context) const {
    expect_input_count(context.inputs.size(), 1);
    const Tensor& input = context.inputs[0];
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
