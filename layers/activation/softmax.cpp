#include <keel/layers/activation/softmax.hpp>

#include <algorithm>
#include <utility>

#include <keel/engine/error.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel {
namespace {

std::string axes_text(const std::vector<int>& axes) {
    std::string text = "[";
    for (int axis : axes) text += (text.size() > 1 ? ", " : "") + std::to_string(axis);
    return text + "]";
}

std::vector<int> axis_list(const std::variant<int, std::vector<int>>& axis) {
    if (const int* single = std::get_if<int>(&axis)) return {*single};
    return std::get<std::vector<int>>(axis);
}

// The normalized span [first, last] of dimensions for an input of `rank`, or a keel::Error.
std::pair<int, int> resolve_axes(const std::vector<int>& axes, int rank, const std::string& where) {
    std::vector<int> resolved;
    for (int axis : axes) {
        if (axis < -rank || axis >= rank) {
            throw invalid_argument(where, "axis", axes_text(axes),
                                   "axes in [-" + std::to_string(rank) + ", " +
                                       std::to_string(rank) + ") for an input of rank " +
                                       std::to_string(rank));
        }
        resolved.push_back(axis < 0 ? axis + rank : axis);
    }
    std::sort(resolved.begin(), resolved.end());
    if (std::adjacent_find(resolved.begin(), resolved.end()) != resolved.end()) {
        throw invalid_argument(where, "axis", axes_text(axes), "no duplicate axes");
    }
    if (resolved.back() - resolved.front() + 1 != static_cast<int>(resolved.size())) {
        throw unsupported(where, "axis = " + axes_text(axes),
                          "keel normalizes several axes together only when they are adjacent");
    }
    return {resolved.front(), resolved.back()};
}

}  // namespace

struct Softmax::Impl {
    Engine engine;
    SoftmaxOptions options;
    std::vector<int> axes;
};

Softmax::Softmax(SoftmaxOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("softmax") : options.name, options.trainable),
      impl_(std::make_unique<Impl>()) {
    const std::string where = describe();
    options.name = name();
    impl_->axes = axis_list(options.axis);
    if (impl_->axes.empty()) {
        throw invalid_argument(where, "axis", "[]", "an int or a non-empty list of ints");
    }
    layer_arguments::require_float32(where, options.dtype);
    layer_arguments::check_batch_input_shape(where, options.batch_input_shape);
    impl_->engine = std::move(engine);
    impl_->options = std::move(options);
}

Softmax::~Softmax() = default;

std::unique_ptr<Softmax> Softmax::from_config(const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "Softmax");
    SoftmaxOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    if (const auto axis = reader.take("axis")) {
        const std::string expected = "an int or a list of ints";
        if (axis->is_number_integer()) {
            options.axis = axis->get<int>();
        } else if (axis->is_array()) {
            std::vector<int> axes;
            for (const auto& entry : *axis) {
                if (!entry.is_number_integer()) {
                    throw invalid_argument(reader.where(), "axis", axis->dump(), expected);
                }
                axes.push_back(entry.get<int>());
            }
            options.axis = std::move(axes);
        } else {
            throw invalid_argument(reader.where(), "axis", axis->dump(), expected);
        }
    }
    reader.finish();
    return std::make_unique<Softmax>(std::move(options), std::move(engine));
}

nlohmann::json Softmax::get_config() const {
    const SoftmaxOptions& options = impl_->options;
    nlohmann::json config = keras::base_config(name(), trainable(), options.dtype);
    if (const int* single = std::get_if<int>(&options.axis)) {
        config["axis"] = *single;
    } else {
        config["axis"] = std::get<std::vector<int>>(options.axis);
    }
    if (!options.batch_input_shape.is_null()) {
        config["batch_input_shape"] = options.batch_input_shape;
    }
    return config;
}

Shape Softmax::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    const Shape& shape = input_shapes[0];
    if (shape.empty()) {
        throw shape_mismatch(describe(), "input shape", "[]", "rank >= 1 (softmax needs an axis)");
    }
    resolve_axes(impl_->axes, static_cast<int>(shape.size()), describe());
    return shape;
}

const SoftmaxOptions& Softmax::options() const noexcept { return impl_->options; }

void Softmax::build_variables(std::span<const Shape> input_shapes) {
    infer_output_shape(input_shapes);
    layer_arguments::check_declared_input(describe(), impl_->options.batch_input_shape,
                                          input_shapes[0]);
}

Tensor Softmax::forward(const ForwardContext& context) const {
    expect_input_count(context.inputs.size(), 1);
    const Tensor& input = context.inputs[0];
    const Shape& shape = input.shape();
    infer_output_shape(std::span<const Shape>(&shape, 1));
    const auto [first, last] = resolve_axes(impl_->axes, input.rank(), describe());
    // The normalized axes are adjacent, so the tensor is a [outer, length, inner] view.
    std::int64_t outer = 1;
    std::int64_t length = 1;
    std::int64_t inner = 1;
    for (int i = 0; i < input.rank(); ++i) {
        const std::int64_t dim = shape[static_cast<std::size_t>(i)];
        (i < first ? outer : i <= last ? length : inner) *= dim;
    }
    Tensor output = input.dtype() == DType::f32 ? input.clone() : input.to(DType::f32);
    Tensor view = output.reshaped({outer, length, inner});
    activation::ActivationFunction function;
    function.kind = activation::ActivationFunction::Kind::softmax;
    function.axis = 1;
    function.apply_in_place(impl_->engine, view);
    return output;
}

}  // namespace keel
