#pragma once

// Internal: the argument checks every float32-only keel layer (Activation, ReLU, Softmax, Dense)
// shares, so they report bad input in the same words.

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>

namespace keel::layer_checks {

// keel computes these layers in float32: another dtype is refused, not silently ignored.
inline void require_float32(const std::string& dtype, const std::string& where) {
    if (dtype == "float32" || dtype == "f32") return;
    throw unsupported(where, "dtype = \"" + dtype + "\"",
                      "keel computes this layer in float32 only (inputs of other dtypes are "
                      "converted)");
}

// Keras' batch_input_shape: null or a list of at most kMaxRank non-negative ints and nulls.
inline void require_valid_batch_input_shape(const nlohmann::json& shape, const std::string& where) {
    if (shape.is_null()) return;
    bool valid = shape.is_array() && shape.size() <= static_cast<std::size_t>(kMaxRank);
    for (const auto& dim : valid ? shape : nlohmann::json::array()) {
        valid =
            valid && (dim.is_null() || (dim.is_number_integer() && dim.get<std::int64_t>() >= 0));
    }
    if (!valid) {
        throw invalid_argument(where, "batch_input_shape", shape.dump(),
                               "null or a list of at most 8 ints >= 0 and nulls");
    }
}

// At build, as Keras' input compatibility check: a declared batch_input_shape must match the
// input (-1 in the input and null in the declaration match anything).
inline void require_declared_shape(const nlohmann::json& declared, const Shape& input_shape,
                                   const std::string& where) {
    if (!declared.is_array()) return;
    bool matches = declared.size() == input_shape.size();
    for (std::size_t i = 0; matches && i < input_shape.size(); ++i) {
        matches = declared[i].is_null() || input_shape[i] < 0 ||
                  declared[i].get<std::int64_t>() == input_shape[i];
    }
    if (!matches) {
        throw shape_mismatch(where, "input shape", shape_to_string(input_shape),
                             "a shape matching batch_input_shape " + declared.dump());
    }
}

}  // namespace keel::layer_checks
