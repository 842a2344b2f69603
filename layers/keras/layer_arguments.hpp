#pragma once

// Internal: the arguments every float32-only keel layer shares with Keras' base Layer — dtype,
// batch_input_shape, data_format — checked and echoed in one way, so all of them report bad input
// in the same words.

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/tensor.hpp>
#include <keel/layers/keras/constraints.hpp>
#include <keel/layers/keras/initializers.hpp>
#include <keel/layers/keras/regularizers.hpp>

#include "layers/keras/layer_config.hpp"

namespace keel::layer_arguments {

// keel computes these layers in f32 only: any other dtype is an `unsupported` keel::Error (a
// float16 policy silently computed in f32 would give other numbers than Keras).
void require_float32(std::string_view where, std::string_view dtype);

// A declared batch_input_shape is null or a list of at most kMaxRank non-negative ints or nulls.
void check_batch_input_shape(std::string_view where, const nlohmann::json& batch_input_shape);

// At build: the input shape fits a declared batch_input_shape (-1 and null match anything).
void check_declared_input(std::string_view where, const nlohmann::json& batch_input_shape,
                          const Shape& input_shape);

// Keras' normalize_data_format: nullopt (Keras' None, the image_data_format() default) is
// "channels_last"; other values are compared case-insensitively.
std::string normalize_data_format(std::string_view where, const std::optional<std::string>& value);

// Reads data_format from a config: absent and null are None.
std::optional<std::string> read_data_format(keras::LayerConfig& config);

// Keras' base keys (name, trainable, dtype) plus batch_input_shape when one was declared.
nlohmann::json base_config(std::string_view name, bool trainable, std::string_view dtype,
                           const nlohmann::json& batch_input_shape);

// What Keras attaches to one weight (kernel, depthwise_kernel, bias): resolved once from the
// identifiers in the layer's options, echoed by get_config as "<prefix>_initializer",
// "<prefix>_regularizer" and "<prefix>_constraint".
struct WeightSettings {
    std::shared_ptr<const keras::Initializer> initializer;
    std::shared_ptr<const keras::Regularizer> regularizer;
    std::shared_ptr<const keras::Constraint> constraint;
};

// Errors name `where` and the argument ("kernel_initializer", ...).
WeightSettings resolve_weight_settings(std::string_view where, std::string_view prefix,
                                       const nlohmann::json& initializer,
                                       const nlohmann::json& regularizer,
                                       const nlohmann::json& constraint);

// Writes the three keys, each serialized as Keras does or null.
void write_weight_settings(nlohmann::json& config, std::string_view prefix,
                           const WeightSettings& settings);

// variables[index], checked to be f32 with the shape build gave it (forward() reads the run's
// snapshot, and a graph rewrite hands in tensors of its own).
const Tensor& checked_variable(std::string_view where, const std::vector<Tensor>& variables,
                               std::size_t index, std::string_view name, const Shape& shape);

// The input as f32 (converted when it has another dtype, shared otherwise).
Tensor as_float32(const Tensor& input);

// `input` (f32) with a new shape of the same element count: sharing its storage when it owns it
// (keel's tensors are values nobody writes after they are produced), copied when it is a view of
// caller memory whose lifetime keel does not control.
Tensor reshaped_output(const Tensor& input, Shape shape);

}  // namespace keel::layer_arguments
