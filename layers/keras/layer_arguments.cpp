#include "layers/keras/layer_arguments.hpp"

#include <algorithm>
#include <cctype>

#include <keel/engine/error.hpp>

namespace keel::layer_arguments {

void require_float32(std::string_view where, std::string_view dtype) {
    if (dtype == "float32" || dtype == "f32") return;
    throw unsupported(where, "dtype = \"" + std::string(dtype) + "\"",
                      "keel computes this layer in float32 only (expected \"float32\")");
}

void check_batch_input_shape(std::string_view where, const nlohmann::json& batch_input_shape) {
    if (batch_input_shape.is_null()) return;
    bool valid = batch_input_shape.is_array() &&
                 batch_input_shape.size() <= static_cast<std::size_t>(kMaxRank);
    for (const auto& dim : valid ? batch_input_shape : nlohmann::json::array()) {
        valid =
            valid && (dim.is_null() || (dim.is_number_integer() && dim.get<std::int64_t>() >= 0));
    }
    if (!valid) {
        throw invalid_argument(where, "batch_input_shape", batch_input_shape.dump(),
                               "null or a list of at most " + std::to_string(kMaxRank) +
                                   " non-negative ints or nulls (batch first)");
    }
}

void check_declared_input(std::string_view where, const nlohmann::json& batch_input_shape,
                          const Shape& input_shape) {
    if (batch_input_shape.is_null()) return;
    bool matches = batch_input_shape.size() == input_shape.size();
    for (std::size_t i = 0; matches && i < input_shape.size(); ++i) {
        const auto& declared = batch_input_shape[i];
        matches = declared.is_null() || input_shape[i] < 0 ||
                  declared.get<std::int64_t>() == input_shape[i];
    }
    if (!matches) {
        throw shape_mismatch(where, "input shape", shape_to_string(input_shape),
                             "a shape matching batch_input_shape " + batch_input_shape.dump());
    }
}

std::string normalize_data_format(std::string_view where, const std::optional<std::string>& value) {
    if (!value) return "channels_last";
    std::string text = *value;
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (text != "channels_last" && text != "channels_first") {
        throw invalid_argument(where, "data_format", "\"" + *value + "\"",
                               "\"channels_last\", \"channels_first\" or None");
    }
    return text;
}

std::optional<std::string> read_data_format(keras::LayerConfig& config) {
    const std::optional<nlohmann::json> value = config.take("data_format");
    if (!value || value->is_null()) return std::nullopt;
    if (!value->is_string()) {
        throw invalid_argument(config.where(), "data_format", value->dump(),
                               "\"channels_last\", \"channels_first\" or null");
    }
    return value->get<std::string>();
}

nlohmann::json base_config(std::string_view name, bool trainable, std::string_view dtype,
                           const nlohmann::json& batch_input_shape) {
    nlohmann::json config = keras::base_config(name, trainable, dtype);
    if (!batch_input_shape.is_null()) config["batch_input_shape"] = batch_input_shape;
    return config;
}

Tensor as_float32(const Tensor& input) {
    return input.dtype() == DType::f32 ? input : input.to(DType::f32);
}

Tensor reshaped_output(const Tensor& input, Shape shape) {
    return input.owns_storage() ? input.reshaped(std::move(shape))
                                : input.clone().reshaped(std::move(shape));
}

const Tensor& checked_variable(std::string_view where, const std::vector<Tensor>& variables,
                               std::size_t index, std::string_view name, const Shape& shape) {
    if (index >= variables.size()) {
        throw invalid_argument(
            where, "variables", std::to_string(variables.size()) + " tensors",
            "a value for variable '" + std::string(name) + "' at index " + std::to_string(index));
    }
    const Tensor& variable = variables[index];
    if (variable.shape() != shape || variable.dtype() != DType::f32) {
        throw shape_mismatch(
            where, "variable '" + std::string(name) + "'",
            shape_to_string(variable.shape()) + " " + std::string(dtype_name(variable.dtype())),
            shape_to_string(shape) + " float32, as at build");
    }
    return variable;
}

WeightSettings resolve_weight_settings(std::string_view where, std::string_view prefix,
                                       const nlohmann::json& initializer,
                                       const nlohmann::json& regularizer,
                                       const nlohmann::json& constraint) {
    const std::string name(prefix);
    return {keras::get_initializer(initializer, where, name + "_initializer"),
            keras::get_regularizer(regularizer, where, name + "_regularizer"),
            keras::get_constraint(constraint, where, name + "_constraint")};
}

void write_weight_settings(nlohmann::json& config, std::string_view prefix,
                           const WeightSettings& settings) {
    const auto serialize_or_null = [](const auto& object) -> nlohmann::json {
        return object ? keras::serialize(*object) : nlohmann::json(nullptr);
    };
    const std::string name(prefix);
    config[name + "_initializer"] = serialize_or_null(settings.initializer);
    config[name + "_regularizer"] = serialize_or_null(settings.regularizer);
    config[name + "_constraint"] = serialize_or_null(settings.constraint);
}

}  // namespace keel::layer_arguments
