#pragma once

// Internal: reads one layer's Keras config (the "config" object of {"class_name", "config"}) in
// every spelling users have on disk (TF 1.15, TF 2.x / tf_keras, Keras 3), so that each layer
// states only its own keys and every layer reports bad input in the same words.

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace keel::keras {

class LayerConfig {
  public:
    // `class_name` shapes messages ("Conv2D config: strides = ...").
    LayerConfig(const nlohmann::json& config, std::string_view class_name);

    const std::string& where() const noexcept { return where_; }

    // Keys every Keras layer has. name: "" when absent. trainable: true when absent. dtype: a
    // name or a Keras policy object ({"class_name", "config": {"name"}}); "float32" when absent
    // or null. batch_input_shape: TF's `batch_input_shape` or Keras 3's `batch_shape` (null when
    // absent), a list of ints or nulls.
    std::string name();
    bool trainable();
    std::string dtype();
    nlohmann::json batch_input_shape();

    bool has(std::string_view key) const;
    // The raw value (marks the key as read); nullopt when absent.
    std::optional<nlohmann::json> take(std::string_view key);
    // Typed readers: the default when the key is absent; a keel::Error naming the key, the value
    // and the expected type otherwise.
    double number(std::string_view key, double fallback);
    std::optional<double> optional_number(std::string_view key);  // absent or null = nullopt
    std::int64_t integer(std::string_view key, std::int64_t fallback);
    bool boolean(std::string_view key, bool fallback);
    std::string string(std::string_view key, std::string_view fallback);
    // One of `allowed` (Keras accepts these case-insensitively; the result is lower case).
    std::string choice(std::string_view key, std::string_view fallback,
                       const std::vector<std::string>& allowed);
    // An int or a list of `count` ints (Keras' normalize_tuple: kernel_size, strides, ...).
    std::vector<std::int64_t> int_tuple(std::string_view key, std::vector<std::int64_t> fallback,
                                        std::size_t count);
    // A list of ints (Reshape's target_shape, permutations).
    std::vector<std::int64_t> int_list(std::string_view key);
    // Keras identifiers (initializers, regularizers, constraints, activations) stay JSON; the
    // layer resolves them.
    nlohmann::json identifier(std::string_view key, const nlohmann::json& fallback);

    // A key keel accepts only with Keras' default value (e.g. activity_regularizer: null,
    // synchronized: false): other values are an error saying keel does not implement them.
    void accept_only_default(std::string_view key, const nlohmann::json& default_value);

    // Throws keel::Error naming the first key no reader took.
    void finish() const;

  private:
    const nlohmann::json* find(std::string_view key);

    const nlohmann::json& config_;
    std::string where_;
    std::set<std::string, std::less<>> read_;
};

// Keras' standard layer keys echoed by get_config(): name, trainable, dtype.
nlohmann::json base_config(std::string_view name, bool trainable, std::string_view dtype);

}  // namespace keel::keras
