#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>

// Internal to layers/keras/: how initializers, regularizers and constraints read Keras identifiers
// and their configs, so that all three report bad input in the same words. Argument names in
// messages follow the JSON path, e.g. "gamma_initializer.config.stddev".
namespace keel::keras::detail {

// A JSON value as it appears in an error message, shortened so that a huge list cannot flood a log.
inline std::string describe(const nlohmann::json& value) {
    constexpr std::size_t kMaxLength = 80;
    std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() > kMaxLength) {
        text.resize(kMaxLength - 3);
        text += "...";
    }
    return text;
}

// A Keras identifier reduced to what Keras' deserialize_keras_object looks at.
struct Identifier {
    std::string class_name;
    nlohmann::json config;  // always a JSON object
};

// A string names a class or alias with an empty config; an object must carry "class_name" (a
// string) and "config" (an object), as Keras requires. "module" and "registered_name", which
// tf_keras adds when it serializes, are accepted and ignored. `kind` ("initializer", ...) only
// shapes the error text.
inline Identifier parse_identifier(const nlohmann::json& identifier, std::string_view where,
                                   std::string_view argument, std::string_view kind) {
    const std::string expected_form =
        "a Keras " + std::string(kind) + " name, {\"class_name\": ..., \"config\": {...}} or null";
    if (identifier.is_string()) {
        return {identifier.get<std::string>(), nlohmann::json::object()};
    }
    if (!identifier.is_object()) {
        throw invalid_argument(where, argument, describe(identifier), expected_form);
    }
    const std::string path(argument);
    for (const auto& [key, value] : identifier.items()) {
        if (key != "class_name" && key != "config" && key != "module" && key != "registered_name") {
            throw invalid_argument(where, path + "." + key, describe(value),
                                   "no such key; a serialized " + std::string(kind) +
                                       " has \"class_name\" and \"config\"");
        }
    }
    const auto class_name = identifier.find("class_name");
    if (class_name == identifier.end() || !class_name->is_string()) {
        throw invalid_argument(where, path + ".class_name",
                               class_name == identifier.end() ? "(missing)" : describe(*class_name),
                               "a string naming a Keras " + std::string(kind) + " class");
    }
    const auto config = identifier.find("config");
    if (config == identifier.end() || !config->is_object()) {
        throw invalid_argument(where, path + ".config",
                               config == identifier.end() ? "(missing)" : describe(*config),
                               "a JSON object of constructor arguments");
    }
    return {class_name->get<std::string>(), *config};
}

// A number from a config: its value, and the JSON it came from, which get_config() echoes as
// Keras echoes the Python value it was given (so 2 stays 2 and 0.05 stays 0.05).
struct Number {
    double value = 0.0;
    nlohmann::json json;

    static Number of(double value) { return {value, value}; }
    static Number of_integer(std::int64_t value) { return {static_cast<double>(value), value}; }
};

// A seed: absent (null) or a Python-int-like integer that fits int64, as TF's stateless random ops
// require.
struct Seed {
    std::optional<std::int64_t> value;
    nlohmann::json json;
};

// Reads one class's config. Every key the class accepts is taken once through the typed readers;
// finish() then rejects whatever is left, as Python rejects an unexpected keyword argument.
class ConfigReader {
  public:
    ConfigReader(const Identifier& identifier, std::string_view where, std::string_view argument,
                 std::string canonical_name)
        : config_(identifier.config),
          where_(where),
          path_(std::string(argument) + ".config"),
          argument_(argument),
          class_name_(std::move(canonical_name)) {}

    std::string_view where() const noexcept { return where_; }
    std::string_view argument() const noexcept { return argument_; }
    const std::string& class_name() const noexcept { return class_name_; }

    [[noreturn]] void fail(std::string_view key, const nlohmann::json& value,
                           std::string_view expected) const {
        throw invalid_argument(where_, key_path(key), describe(value),
                               std::string(expected) + " (" + class_name_ + ")");
    }

    // The key's value, or nullptr when absent.
    const nlohmann::json* take(std::string_view key) {
        taken_.emplace(key);
        const auto found = config_.find(std::string(key));
        return found == config_.end() ? nullptr : &*found;
    }

    // A finite number (not a boolean); `fallback` when the key is absent.
    Number number(std::string_view key, Number fallback) {
        const nlohmann::json* value = take(key);
        if (value == nullptr) {
            return fallback;
        }
        return checked_number(key, *value);
    }

    // Like number(), but JSON null is allowed and gives std::nullopt (Keras' None).
    std::optional<Number> optional_number(std::string_view key, std::optional<Number> fallback) {
        const nlohmann::json* value = take(key);
        if (value == nullptr) {
            return fallback;
        }
        if (value->is_null()) {
            return std::nullopt;
        }
        return checked_number(key, *value);
    }

    std::string string(std::string_view key, std::string fallback) {
        const nlohmann::json* value = take(key);
        if (value == nullptr) {
            return fallback;
        }
        if (!value->is_string()) {
            fail(key, *value, "a string");
        }
        return value->get<std::string>();
    }

    Seed seed(std::string_view key = "seed") {
        const nlohmann::json* value = take(key);
        if (value == nullptr || value->is_null()) {
            return {std::nullopt, nullptr};
        }
        if (value->is_number_unsigned()) {
            const auto unsigned_value = value->get<std::uint64_t>();
            if (unsigned_value > static_cast<std::uint64_t>(INT64_MAX)) {
                fail(key, *value, "null or an integer that fits in int64");
            }
            return {static_cast<std::int64_t>(unsigned_value), *value};
        }
        if (!value->is_number_integer()) {
            fail(key, *value, "null or an integer that fits in int64");
        }
        return {value->get<std::int64_t>(), *value};
    }

    // Keras' from_config drops "dtype" (V1 initializers wrote it) without looking at it; keel does
    // the same but still wants a string or null there.
    void ignore_dtype() {
        const nlohmann::json* value = take("dtype");
        if (value != nullptr && !value->is_null() && !value->is_string()) {
            fail("dtype", *value, "a dtype name or null; it is ignored");
        }
    }

    void finish() const {
        for (const auto& [key, value] : config_.items()) {
            if (!taken_.contains(key)) {
                std::string accepted;
                for (const std::string& name : taken_) {
                    if (name == "dtype") {
                        continue;
                    }
                    accepted += accepted.empty() ? name : ", " + name;
                }
                fail(key, value,
                     "no such argument; accepted: " + (accepted.empty() ? "none" : accepted));
            }
        }
    }

  private:
    std::string key_path(std::string_view key) const { return path_ + "." + std::string(key); }

    Number checked_number(std::string_view key, const nlohmann::json& value) const {
        if (!value.is_number()) {
            fail(key, value, "a number");
        }
        const double number = value.get<double>();
        if (!std::isfinite(number)) {
            fail(key, value, "a finite number");
        }
        return {number, value};
    }

    const nlohmann::json& config_;
    std::string where_;
    std::string path_;
    std::string argument_;
    std::string class_name_;
    std::set<std::string, std::less<>> taken_;
};

}  // namespace keel::keras::detail
