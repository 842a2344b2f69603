#include <keel/layers/merging/add.hpp>

#include "layers/keras/layer_arguments.hpp"
#include "layers/keras/layer_config.hpp"
#include "layers/merging/elementwise_merge.hpp"

namespace keel {

Add::Add(AddOptions options, Engine engine)
    : Layer(options.name.empty() ? unique_layer_name("add") : options.name, options.trainable),
      options_(std::move(options)),
      engine_(std::move(engine)) {
    options_.name = name();
    layer_arguments::require_float32(describe(), options_.dtype);
    layer_arguments::check_batch_input_shape(describe(), options_.batch_input_shape);
}

Add::~Add() = default;

std::unique_ptr<Add> Add::from_config(const nlohmann::json& config, Engine engine) {
    keras::LayerConfig reader(config, "Add");
    AddOptions options;
    options.name = reader.name();
    options.trainable = reader.trainable();
    options.dtype = reader.dtype();
    options.batch_input_shape = reader.batch_input_shape();
    reader.finish();
    return std::make_unique<Add>(std::move(options), std::move(engine));
}

nlohmann::json Add::get_config() const {
    return layer_arguments::base_config(name(), trainable(), options_.dtype,
                                        options_.batch_input_shape);
}

Shape Add::infer_output_shape(std::span<const Shape> input_shapes) const {
    return merging::elementwise_output_shape(describe(), input_shapes);
}

void Add::build_variables(std::span<const Shape> input_shapes) {
    if (!input_shapes.empty()) {
        layer_arguments::check_declared_input(describe(), options_.batch_input_shape,
                                              input_shapes[0]);
    }
    infer_output_shape(input_shapes);
}

Tensor Add::forward(const ForwardContext& context) const {
    // Keras returns a single input as it is; keel copies it unless the caller gave it up, so that
    // the output is always the Add's own (returns_exclusive_storage).
    if (context.inputs.size() == 1 && context.inputs[0].dtype() == DType::f32 &&
        !context.may_overwrite(0)) {
        return context.inputs[0].clone();
    }
    return merging::merge_elementwise(engine_, describe(), merging::ElementwiseOperation::add,
                                      context.inputs, context.overwritable_inputs);
}

}  // namespace keel
