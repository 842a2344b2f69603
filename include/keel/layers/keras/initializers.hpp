#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include <keel/engine/tensor.hpp>

namespace keel::keras {

// A Keras initializer: fills a variable of a given shape. Deterministic when its config has a
// seed (same seed, same shape, same values); a null seed draws a fresh seed on every call, as
// TensorFlow's unseeded random ops do.
// Values are not TensorFlow's bit-for-bit (TF's Philox streams are not reproduced), but follow the
// same distributions, bounds and fan computations.
class Initializer {
  public:
    virtual ~Initializer() = default;
    // The canonical Keras class name, e.g. "Zeros", "GlorotUniform".
    virtual std::string class_name() const = 0;
    virtual nlohmann::json get_config() const = 0;
    // A new f32 tensor of `shape`. Throws keel::Error if the initializer cannot fill that shape
    // (e.g. Identity on a rank-1 shape), naming `where` (the layer and variable).
    virtual Tensor operator()(const Shape& shape, std::string_view where) const = 0;
};

// Resolves a Keras identifier: a name ("zeros", "glorot_uniform", "GlorotUniform", ...), or
// {"class_name": ..., "config": {...}}. JSON null returns nullptr (the caller decides the default;
// Keras' add_weight uses glorot_uniform). Unknown names, bad configs and other JSON types are a
// keel::Error naming `where` and `argument`.
std::shared_ptr<const Initializer> get_initializer(const nlohmann::json& identifier,
                                                   std::string_view where,
                                                   std::string_view argument);

// {"class_name": ..., "config": ...} as Keras serializes it.
nlohmann::json serialize(const Initializer& initializer);

}  // namespace keel::keras
