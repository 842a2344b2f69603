#include <keel/layers/reshaping/reshape.hpp>

#include <algorithm>

#include <keel/engine/error.hpp>

#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"

namespace keel {
namespace {

std::string list_text(const std::vector<std::int64_t>& values) {
    std::string text = "[";
    for (std::size_t i = 0; i < values.size(); ++i) {
        text += (i > 0 ? ", " : "") + std::to_string(values[i]);
    }
    return text + "]";
}

}  // namespace

// Reshape computes nothing, so it needs no engine; it takes one like every layer.
Reshape::Reshape(ReshapeOptions options, Engine /*engine*/)
    : Layer(options.name.empty() ? unique_layer_name("reshape") : options.name, options.trainable),
      options_(std::move(options)) {
    options_.name = name();
    const std::string where = describe();
    const std::vector<std::int64_t>& target = options_.target_shape;
    const auto unknown = std::count(target.begin(), target.end(), -1);
    const bool valid =
        std::all_of(target.begin(), target.end(), [](std::int64_t dim) { return dim >= -1; }) &&
        unknown <= 1 && target.size() < static_cast<std::size_t>(kMaxRank);
    if (!valid) {
        throw invalid_argument(where, "target_shape", list_text(target),
                               "non-negative ints with at most one -1, at most " +
                                   std::to_string(kMaxRank - 1) + " of them (batch excluded)");
    }
    // Checked here because no input can satisfy it: a -1 beside a 0 has no unique size.
    if (unknown == 1 && std::find(target.begin(), target.end(), 0) != target.end()) {
        throw invalid_argument(where, "target_shape", list_text(target),
                               "no -1 together with a 0 (the -1 would be ambiguous)");
    }
    layer_arguments::require_float32(where, options_.dtype);
    layer_arguments::check_batch_input_shape(where, options_.batch_input_shape);
}

Reshape::~Reshape() = default;

std::unique_ptr<Reshape> Reshape::from_config(const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "Reshape");
    ReshapeOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    options.target_shape = reader.int_list("target_shape");
    reader.finish();
    return std::make_unique<Reshape>(std::move(options), std::move(engine));
}

nlohmann::json Reshape::get_config() const {
    nlohmann::json config = layer_arguments::base_config(name(), trainable(), options_.dtype,
                                                         options_.batch_input_shape);
    config["target_shape"] = options_.target_shape;
    return config;
}

Shape Reshape::infer_output_shape(std::span<const Shape> input_shapes) const {
    expect_input_count(input_shapes.size(), 1);
    const Shape& input = input_shapes[0];
    if (input.empty()) {
        throw shape_mismatch(describe(), "input shape", shape_to_string(input),
                             "rank >= 1 (batch first)");
    }
    Shape output{input[0]};
    output.insert(output.end(), options_.target_shape.begin(), options_.target_shape.end());
    // With an unknown non-batch input dimension the count is checked at run time (Keras: the
    // -1 stays unknown).
    if (std::any_of(input.begin() + 1, input.end(), [](std::int64_t dim) { return dim < 0; })) {
        return output;
    }
    const std::int64_t count = element_count(Shape(input.begin() + 1, input.end()), describe());
    std::int64_t known = 1;
    std::int64_t* unknown = nullptr;
    for (std::size_t d = 1; d < output.size(); ++d) {
        if (output[d] < 0) {
            unknown = &output[d];
        } else {
            known *= output[d];
        }
    }
    const bool fits = unknown != nullptr ? known != 0 && count % known == 0 : count == known;
    if (!fits) {
        const std::string target = list_text(options_.target_shape);
        throw shape_mismatch(
            describe(), "input shape",
            shape_to_string(input) + " (" + std::to_string(count) + " elements per sample)",
            unknown != nullptr
                ? "a per-sample element count divisible by " + std::to_string(known) +
                      ", to fill target_shape " + target
                : std::to_string(known) + " elements per sample, as target_shape " + target);
    }
    if (unknown != nullptr) *unknown = count / known;
    return output;
}

void Reshape::build_variables(std::span<const Shape> input_shapes) {
    infer_output_shape(input_shapes);
    layer_arguments::check_declared_input(describe(), options_.batch_input_shape, input_shapes[0]);
}

Tensor Reshape::forward(const ForwardContext& context) const {
    expect_input_count(context.inputs.size(), 1);
    const Tensor input = layer_arguments::as_float32(context.inputs[0]);
    const Shape& shape = input.shape();
    return layer_arguments::reshaped_output(input,
                                            infer_output_shape(std::span<const Shape>(&shape, 1)));
}

}  // namespace keel
