#include "layers/keras/layer_config.hpp"

#include <algorithm>
#include <cctype>
#include <limits>

#include <keel/engine/error.hpp>

#include "layers/keras/config_reader.hpp"

namespace keel::keras {

using detail::describe;

LayerConfig::LayerConfig(const nlohmann::json& config, std::string_view class_name)
    : config_(config), where_(std::string(class_name) + " config") {
    if (!config_.is_object()) {
        throw invalid_argument(where_, "config", describe(config_), "a JSON object");
    }
    // Keys Keras writes for every layer that carry nothing keel needs to reproduce.
    for (const char* ignored : {"module", "registered_name", "build_config"}) {
        if (config_.contains(ignored)) read_.insert(ignored);
    }
}

const nlohmann::json* LayerConfig::find(std::string_view key) {
    const auto found = config_.find(std::string(key));
    if (found == config_.end()) return nullptr;
    read_.insert(std::string(key));
    return &*found;
}

bool LayerConfig::has(std::string_view key) const { return config_.contains(std::string(key)); }

std::optional<nlohmann::json> LayerConfig::take(std::string_view key) {
    const nlohmann::json* value = find(key);
    if (value == nullptr) return std::nullopt;
    return *value;
}

std::string LayerConfig::name() { return string("name", ""); }

bool LayerConfig::trainable() { return boolean("trainable", true); }

std::string LayerConfig::dtype() {
    const nlohmann::json* value = find("dtype");
    if (value == nullptr || value->is_null()) return "float32";
    if (value->is_string()) return value->get<std::string>();
    if (value->is_object() && value->contains("config") && (*value)["config"].is_object() &&
        (*value)["config"].contains("name") && (*value)["config"]["name"].is_string()) {
        return (*value)["config"]["name"].get<std::string>();
    }
    throw invalid_argument(where_, "dtype", describe(*value),
                           "a dtype name or a Keras policy object {\"class_name\", \"config\": "
                           "{\"name\"}}");
}

nlohmann::json LayerConfig::batch_input_shape() {
    const nlohmann::json* tf = find("batch_input_shape");
    const nlohmann::json* keras3 = find("batch_shape");
    const nlohmann::json* value = tf != nullptr ? tf : keras3;
    if (value == nullptr || value->is_null()) return nullptr;
    const char* key = tf != nullptr ? "batch_input_shape" : "batch_shape";
    bool valid = value->is_array();
    for (const auto& dim : valid ? *value : nlohmann::json::array()) {
        valid =
            valid && (dim.is_null() || (dim.is_number_integer() && dim.get<std::int64_t>() >= 0));
    }
    if (!valid) {
        throw invalid_argument(where_, key, describe(*value),
                               "a list of non-negative ints or nulls (batch first)");
    }
    return *value;
}

double LayerConfig::number(std::string_view key, double fallback) {
    const nlohmann::json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_number()) throw invalid_argument(where_, key, describe(*value), "a number");
    return value->get<double>();
}

std::optional<double> LayerConfig::optional_number(std::string_view key) {
    const nlohmann::json* value = find(key);
    if (value == nullptr || value->is_null()) return std::nullopt;
    if (!value->is_number()) {
        throw invalid_argument(where_, key, describe(*value), "a number or null");
    }
    return value->get<double>();
}

std::int64_t LayerConfig::integer(std::string_view key, std::int64_t fallback) {
    const nlohmann::json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_number_integer()) {
        throw invalid_argument(where_, key, describe(*value), "an integer");
    }
    return value->get<std::int64_t>();
}

bool LayerConfig::boolean(std::string_view key, bool fallback) {
    const nlohmann::json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) {
        throw invalid_argument(where_, key, describe(*value), "true or false");
    }
    return value->get<bool>();
}

std::string LayerConfig::string(std::string_view key, std::string_view fallback) {
    const nlohmann::json* value = find(key);
    if (value == nullptr) return std::string(fallback);
    if (!value->is_string()) throw invalid_argument(where_, key, describe(*value), "a string");
    return value->get<std::string>();
}

std::string LayerConfig::choice(std::string_view key, std::string_view fallback,
                                const std::vector<std::string>& allowed) {
    std::string text = string(key, fallback);
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (std::find(allowed.begin(), allowed.end(), text) == allowed.end()) {
        std::string expected;
        for (const std::string& option : allowed) {
            expected += (expected.empty() ? "one of \"" : ", \"") + option + "\"";
        }
        throw invalid_argument(where_, key, "\"" + text + "\"", expected);
    }
    return text;
}

std::vector<std::int64_t> LayerConfig::int_tuple(std::string_view key,
                                                 std::vector<std::int64_t> fallback,
                                                 std::size_t count) {
    const nlohmann::json* value = find(key);
    if (value == nullptr) return fallback;
    const std::string expected = "an int or a list of " + std::to_string(count) + " ints";
    if (value->is_number_integer()) {
        return std::vector<std::int64_t>(count, value->get<std::int64_t>());
    }
    if (!value->is_array() || value->size() != count) {
        throw invalid_argument(where_, key, describe(*value), expected);
    }
    std::vector<std::int64_t> result;
    for (const auto& entry : *value) {
        if (!entry.is_number_integer())
            throw invalid_argument(where_, key, describe(*value), expected);
        result.push_back(entry.get<std::int64_t>());
    }
    return result;
}

std::vector<std::int64_t> LayerConfig::int_list(std::string_view key) {
    const nlohmann::json* value = find(key);
    const std::string expected = "a list of ints";
    if (value == nullptr) throw invalid_argument(where_, key, "(missing)", expected);
    if (!value->is_array()) throw invalid_argument(where_, key, describe(*value), expected);
    std::vector<std::int64_t> result;
    for (const auto& entry : *value) {
        if (!entry.is_number_integer())
            throw invalid_argument(where_, key, describe(*value), expected);
        result.push_back(entry.get<std::int64_t>());
    }
    return result;
}

nlohmann::json LayerConfig::identifier(std::string_view key, const nlohmann::json& fallback) {
    const nlohmann::json* value = find(key);
    return value == nullptr ? fallback : *value;
}

void LayerConfig::accept_only_default(std::string_view key, const nlohmann::json& default_value) {
    const nlohmann::json* value = find(key);
    if (value == nullptr || *value == default_value) return;
    throw unsupported(where_, std::string(key) + " = " + describe(*value),
                      "keel implements only Keras' default (" + describe(default_value) + ")");
}

void LayerConfig::finish() const {
    for (const auto& [key, value] : config_.items()) {
        if (!read_.contains(key)) {
            throw invalid_argument(where_, key, describe(value),
                                   "no such argument for this layer (a Keras argument keel does "
                                   "not know)");
        }
    }
}

nlohmann::json base_config(std::string_view name, bool trainable, std::string_view dtype) {
    return {{"name", name}, {"trainable", trainable}, {"dtype", dtype}};
}

}  // namespace keel::keras
