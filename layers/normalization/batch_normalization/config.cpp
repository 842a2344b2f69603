#include "layers/normalization/batch_normalization/config.hpp"

#include <cmath>
#include <limits>
#include <set>
#include <sstream>

#include <keel/engine/error.hpp>

namespace keel::batch_normalization {
namespace {

// An integer JSON value that fits `Integer`; unsigned values above its range are not wrapped.
template <typename Integer>
bool fits(const nlohmann::json& value) {
    if (value.is_number_unsigned()) {
        return value.get<std::uint64_t>() <=
               static_cast<std::uint64_t>(std::numeric_limits<Integer>::max());
    }
    if (!value.is_number_integer()) return false;
    const auto number = value.get<std::int64_t>();
    return number >= std::numeric_limits<Integer>::min() &&
           number <= std::numeric_limits<Integer>::max();
}

std::string format_number(double value) {
    std::ostringstream text;
    text.precision(17);
    text << value;
    return text.str();
}

std::string format_axis(const std::variant<int, std::vector<int>>& axis) {
    if (const int* single = std::get_if<int>(&axis)) return std::to_string(*single);
    std::string text = "[";
    for (int value : std::get<std::vector<int>>(axis)) {
        text += (text.size() > 1 ? ", " : "") + std::to_string(value);
    }
    return text + "]";
}

void require_in_unit_interval(double value, const std::string& where, const char* argument) {
    if (!(value >= 0.0 && value <= 1.0)) {
        throw invalid_argument(where, argument, format_number(value), "a value in [0, 1]");
    }
}

// TF's _raise_if_fused_cannot_be_used, on the unresolved axis: the first failing reason, or "".
std::string fused_ineligibility(const BatchNormalizationOptions& options,
                                const std::vector<int>& axis) {
    if (options.renorm) return "renorm = true; fused=true does not support batch renormalization";
    const bool tf_keras = options.behavior == BatchNormalizationBehavior::tf_keras;
    const std::set<int> allowed =
        tf_keras ? std::set<int>{-4, -3, -1, 1, 3, 4} : std::set<int>{-3, -1, 1, 3};
    if (axis.size() != 1 || !allowed.contains(axis[0])) {
        return std::string("axis = ") + format_axis(options.axis) +
               (tf_keras ? "; fused=true needs axis 1 or 3 (rank 4) or 1 or 4 (rank 5)"
                         : "; fused=true needs a single axis 1 or 3 (or -3, -1)");
    }
    if (options.virtual_batch_size) {
        return "virtual_batch_size = " + std::to_string(*options.virtual_batch_size) +
               "; fused=true does not support virtual batches";
    }
    if (options.adjustment) return "adjustment is set; fused=true does not support adjustment";
    return "";
}

}  // namespace

DType compute_dtype_from(const std::string& dtype_name, const std::string& where) {
    if (dtype_name == "float32" || dtype_name == "f32") return DType::f32;
    if (dtype_name == "bfloat16" || dtype_name == "bf16" || dtype_name == "mixed_bfloat16") {
        return DType::bf16;
    }
    if (dtype_name == "float16" || dtype_name == "f16" || dtype_name == "mixed_float16") {
        return DType::f16;
    }
    if (dtype_name == "float64" || dtype_name == "f64") {
        throw unsupported(where, "dtype = float64",
                          "keel computes batch normalization for float32, bfloat16 and float16");
    }
    throw invalid_argument(where, "dtype", "'" + dtype_name + "'",
                           "one of float32, bfloat16, float16, mixed_float16, mixed_bfloat16");
}

ResolvedArguments resolve_arguments(const BatchNormalizationOptions& options,
                                    const std::string& where) {
    ResolvedArguments resolved;
    // 1. axis: TF accepts an int or a list; JSON and the C++ type leave no other shape.
    if (const int* single = std::get_if<int>(&options.axis)) {
        resolved.axis = {*single};
    } else {
        resolved.axis = std::get<std::vector<int>>(options.axis);
        if (resolved.axis.empty()) {
            throw invalid_argument(where, "axis", "[]", "an int or a non-empty list of ints");
        }
    }
    // 2. Keras objects, each resolved by name or config.
    resolved.beta_initializer =
        keras::get_initializer(options.beta_initializer, where, "beta_initializer");
    resolved.gamma_initializer =
        keras::get_initializer(options.gamma_initializer, where, "gamma_initializer");
    resolved.moving_mean_initializer =
        keras::get_initializer(options.moving_mean_initializer, where, "moving_mean_initializer");
    resolved.moving_variance_initializer = keras::get_initializer(
        options.moving_variance_initializer, where, "moving_variance_initializer");
    resolved.beta_regularizer =
        keras::get_regularizer(options.beta_regularizer, where, "beta_regularizer");
    resolved.gamma_regularizer =
        keras::get_regularizer(options.gamma_regularizer, where, "gamma_regularizer");
    resolved.beta_constraint =
        keras::get_constraint(options.beta_constraint, where, "beta_constraint");
    resolved.gamma_constraint =
        keras::get_constraint(options.gamma_constraint, where, "gamma_constraint");

    // 3. The fused flag (spec §2.3): V2 and tf_keras check eligibility now; V1 defers everything.
    // Keras 3's BatchNormalization has none of the TF-only arguments.
    resolved.fused = options.fused;
    if (options.behavior == BatchNormalizationBehavior::keras3) {
        const auto refuse = [&](const char* argument, const std::string& value) {
            throw invalid_argument(where, argument, value,
                                   "the Keras 3 behaviour, which has no such argument (use "
                                   "behavior \"v2\" or \"tf_keras\" for TensorFlow's class)");
        };
        if (resolved.axis.size() != 1) refuse("axis", format_axis(options.axis));
        if (options.renorm) refuse("renorm", "true");
        if (options.virtual_batch_size) {
            refuse("virtual_batch_size", std::to_string(*options.virtual_batch_size));
        }
        if (options.adjustment) refuse("adjustment", "a callable");
        if (options.fused == true) refuse("fused", "true");
        resolved.fused = false;
    } else if (options.behavior == BatchNormalizationBehavior::v1) {
        if (!resolved.fused) resolved.fused = true;
    } else {
        const std::string reason = fused_ineligibility(options, resolved.axis);
        if (options.fused == true && !reason.empty()) {
            throw invalid_argument(where, "fused", "true",
                                   "a configuration the fused implementation supports; " + reason);
        }
        if (!options.fused && !reason.empty()) resolved.fused = false;
    }

    // 4. renorm_clipping keys, only looked at when renorm is on (TF ignores them otherwise).
    if (options.renorm) {
        for (const auto& [key, value] : options.renorm_clipping) {
            if (key == "rmin") {
                resolved.rmin = value;
            } else if (key == "rmax") {
                resolved.rmax = value;
            } else if (key == "dmax") {
                resolved.dmax = value;
            } else {
                throw invalid_argument(where, "renorm_clipping key", "'" + key + "'",
                                       "only the keys rmin, rmax, dmax");
            }
        }
    }

    // keel's own checks: values TF accepts silently but that only produce NaN or nonsense.
    if (!std::isfinite(options.epsilon) || options.epsilon < 0.0) {
        throw invalid_argument(where, "epsilon", format_number(options.epsilon),
                               "a finite value >= 0");
    }
    require_in_unit_interval(options.momentum, where, "momentum");
    if (options.renorm) {
        require_in_unit_interval(options.renorm_momentum, where, "renorm_momentum");
        for (const auto& [key, value] : options.renorm_clipping) {
            if (std::isnan(value)) {
                throw invalid_argument(where, "renorm_clipping['" + key + "']", "nan",
                                       "a number (+inf is allowed for rmax and dmax)");
            }
        }
        if (resolved.rmin && !(*resolved.rmin < std::numeric_limits<double>::infinity())) {
            throw invalid_argument(where, "renorm_clipping['rmin']", format_number(*resolved.rmin),
                                   "a finite lower bound for r");
        }
        if (resolved.rmin && resolved.rmax && *resolved.rmin > *resolved.rmax) {
            throw invalid_argument(where, "renorm_clipping",
                                   "rmin = " + format_number(*resolved.rmin) +
                                       ", rmax = " + format_number(*resolved.rmax),
                                   "rmin <= rmax");
        }
        if (resolved.dmax && *resolved.dmax < 0.0) {
            throw invalid_argument(where, "renorm_clipping['dmax']", format_number(*resolved.dmax),
                                   "a bound >= 0 (d is clipped to [-dmax, dmax])");
        }
    }
    if (!options.batch_input_shape.is_null()) {
        bool valid = options.batch_input_shape.is_array() &&
                     options.batch_input_shape.size() <= static_cast<std::size_t>(kMaxRank);
        for (const auto& dim : options.batch_input_shape) {
            valid = valid &&
                    (dim.is_null() || (fits<std::int64_t>(dim) && dim.get<std::int64_t>() >= 0));
        }
        if (!valid) {
            throw invalid_argument(where, "batch_input_shape", options.batch_input_shape.dump(),
                                   "null or a list of at most 8 ints >= 0 and nulls");
        }
    }
    resolved.compute_dtype = compute_dtype_from(options.dtype, where);
    return resolved;
}

namespace {

const std::string kWhere = "BatchNormalization config";

const nlohmann::json& checked(const nlohmann::json& config, const char* key,
                              bool (*is_type)(const nlohmann::json&), const char* expected) {
    const nlohmann::json& value = config.at(key);
    if (!is_type(value)) throw invalid_argument(kWhere, key, value.dump(), expected);
    return value;
}

bool is_number(const nlohmann::json& value) { return value.is_number(); }
bool is_boolean(const nlohmann::json& value) { return value.is_boolean(); }
bool is_string(const nlohmann::json& value) { return value.is_string(); }

// The range against the input's rank is TF's build-time check; here only the type.
int axis_value(const nlohmann::json& value) {
    if (!fits<int>(value)) {
        throw invalid_argument(kWhere, "axis", value.dump(), "an int or a list of ints");
    }
    return value.get<int>();
}

std::string dtype_from_json(const nlohmann::json& value) {
    if (value.is_string()) return value.get<std::string>();
    // Keras 2 and 3 write mixed-precision policies as {"class_name": ..., "config": {"name": ...}}.
    if (value.is_object() && value.contains("config") && value["config"].is_object() &&
        value["config"].contains("name") && value["config"]["name"].is_string()) {
        return value["config"]["name"].get<std::string>();
    }
    throw invalid_argument(kWhere, "dtype", value.dump(),
                           "a dtype name or a Keras policy object {\"class_name\", \"config\": "
                           "{\"name\"}}");
}

}  // namespace

BatchNormalizationOptions options_from_config(const nlohmann::json& config) {
    if (!config.is_object()) {
        throw invalid_argument(kWhere, "config", config.dump(), "a JSON object");
    }
    BatchNormalizationOptions options;
    for (const auto& [key, value] : config.items()) {
        if (key == "name") {
            options.name = checked(config, "name", is_string, "a string").get<std::string>();
        } else if (key == "trainable") {
            options.trainable =
                checked(config, "trainable", is_boolean, "true or false").get<bool>();
        } else if (key == "dtype") {
            if (!value.is_null()) options.dtype = dtype_from_json(value);
        } else if (key == "batch_input_shape" || key == "batch_shape") {
            // TF's and Keras 3's spellings of the same argument; checked by resolve_arguments.
            options.batch_input_shape = value;
        } else if (key == "axis") {
            if (value.is_array()) {
                std::vector<int> axes;
                for (const auto& entry : value) axes.push_back(axis_value(entry));
                options.axis = axes;
            } else {
                options.axis = axis_value(value);
            }
        } else if (key == "momentum") {
            options.momentum = checked(config, "momentum", is_number, "a number").get<double>();
        } else if (key == "epsilon") {
            options.epsilon = checked(config, "epsilon", is_number, "a number").get<double>();
        } else if (key == "center") {
            options.center = checked(config, "center", is_boolean, "true or false").get<bool>();
        } else if (key == "scale") {
            options.scale = checked(config, "scale", is_boolean, "true or false").get<bool>();
        } else if (key == "beta_initializer") {
            options.beta_initializer = value;
        } else if (key == "gamma_initializer") {
            options.gamma_initializer = value;
        } else if (key == "moving_mean_initializer") {
            options.moving_mean_initializer = value;
        } else if (key == "moving_variance_initializer") {
            options.moving_variance_initializer = value;
        } else if (key == "beta_regularizer") {
            options.beta_regularizer = value;
        } else if (key == "gamma_regularizer") {
            options.gamma_regularizer = value;
        } else if (key == "beta_constraint") {
            options.beta_constraint = value;
        } else if (key == "gamma_constraint") {
            options.gamma_constraint = value;
        } else if (key == "renorm") {
            options.renorm = checked(config, "renorm", is_boolean, "true or false").get<bool>();
        } else if (key == "renorm_clipping") {
            if (value.is_null()) continue;
            if (!value.is_object()) {
                throw invalid_argument(kWhere, key, value.dump(),
                                       "null or an object mapping rmin/rmax/dmax to numbers");
            }
            for (const auto& [bound, number] : value.items()) {
                if (bound != "rmin" && bound != "rmax" && bound != "dmax") {
                    // Kept so that resolve_arguments rejects it when renorm is on (TF checks the
                    // keys whatever their values, and ignores the dictionary without renorm).
                    options.renorm_clipping[bound] =
                        number.is_number() ? number.get<double>() : 0.0;
                    continue;
                }
                if (number.is_null()) continue;  // TF's .get(key) of None: no bound
                if (!number.is_number()) {
                    throw invalid_argument(kWhere, "renorm_clipping['" + bound + "']",
                                           number.dump(), "a number or null");
                }
                options.renorm_clipping[bound] = number.get<double>();
            }
        } else if (key == "renorm_momentum") {
            options.renorm_momentum =
                checked(config, "renorm_momentum", is_number, "a number").get<double>();
        } else if (key == "fused") {
            if (!value.is_null()) {
                options.fused =
                    checked(config, "fused", is_boolean, "true, false or null").get<bool>();
            }
        } else if (key == "virtual_batch_size") {
            if (!value.is_null()) {
                if (!fits<std::int64_t>(value)) {
                    throw invalid_argument(kWhere, key, value.dump(), "an integer or null");
                }
                options.virtual_batch_size = value.get<std::int64_t>();
            }
        } else if (key == "behavior") {
            options.behavior = parse_behavior(
                checked(config, "behavior", is_string, "\"v2\", \"v1\", \"tf_keras\" or \"keras3\"")
                    .get<std::string>());
        } else if (key == "synchronized") {
            // tf_keras' cross-replica statistics: keel runs on one replica, so only false means
            // the same computation.
            if (!(value.is_boolean() && !value.get<bool>())) {
                throw unsupported(kWhere, "synchronized = " + value.dump(),
                                  "keel normalizes on a single replica (only false is accepted)");
            }
        } else if (key == "adjustment") {
            throw invalid_argument(kWhere, key, value.dump(),
                                   "no adjustment key: a callable cannot be serialized (pass it "
                                   "in BatchNormalizationOptions::adjustment)");
        } else {
            throw invalid_argument(kWhere, "key", "'" + key + "'",
                                   "a BatchNormalization argument (axis, momentum, epsilon, "
                                   "center, scale, *_initializer, *_regularizer, *_constraint, "
                                   "renorm, renorm_clipping, renorm_momentum, fused, trainable, "
                                   "virtual_batch_size, name, dtype, behavior)");
        }
    }
    return options;
}

nlohmann::json config_from_options(const BatchNormalizationOptions& options,
                                   const ResolvedArguments& resolved) {
    auto serialize_or_null = [](const auto& object) -> nlohmann::json {
        return object ? keras::serialize(*object) : nlohmann::json(nullptr);
    };
    nlohmann::json config;
    config["name"] = options.name;
    config["trainable"] = options.trainable;
    config["dtype"] = options.dtype;
    if (!options.batch_input_shape.is_null())
        config["batch_input_shape"] = options.batch_input_shape;
    if (const int* single = std::get_if<int>(&options.axis)) {
        config["axis"] = *single;
    } else {
        config["axis"] = std::get<std::vector<int>>(options.axis);
    }
    config["momentum"] = options.momentum;
    config["epsilon"] = options.epsilon;
    config["center"] = options.center;
    config["scale"] = options.scale;
    config["beta_initializer"] = serialize_or_null(resolved.beta_initializer);
    config["gamma_initializer"] = serialize_or_null(resolved.gamma_initializer);
    config["moving_mean_initializer"] = serialize_or_null(resolved.moving_mean_initializer);
    config["moving_variance_initializer"] = serialize_or_null(resolved.moving_variance_initializer);
    config["beta_regularizer"] = serialize_or_null(resolved.beta_regularizer);
    config["gamma_regularizer"] = serialize_or_null(resolved.gamma_regularizer);
    config["beta_constraint"] = serialize_or_null(resolved.beta_constraint);
    config["gamma_constraint"] = serialize_or_null(resolved.gamma_constraint);
    if (options.renorm) {
        config["renorm"] = true;
        nlohmann::json clipping = nlohmann::json::object();
        for (const auto& [key, value] : options.renorm_clipping) clipping[key] = value;
        config["renorm_clipping"] = clipping;
        config["renorm_momentum"] = options.renorm_momentum;
    }
    if (options.virtual_batch_size) config["virtual_batch_size"] = *options.virtual_batch_size;
    // keel's extension keys: TF omits `fused`, but it changes results (spec §6a), so keel keeps
    // the user's value; `behavior` says which TensorFlow class is reproduced.
    config["fused"] = options.fused ? nlohmann::json(*options.fused) : nlohmann::json(nullptr);
    config["behavior"] = std::string(behavior_name(options.behavior));
    return config;
}

}  // namespace keel::batch_normalization
