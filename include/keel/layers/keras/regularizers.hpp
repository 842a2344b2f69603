#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include <keel/engine/tensor.hpp>

namespace keel::keras {

// A Keras weight regularizer: a penalty added to the training loss.
class Regularizer {
  public:
    virtual ~Regularizer() = default;
    virtual std::string class_name() const = 0;
    virtual nlohmann::json get_config() const = 0;
    // The penalty for `weights` (accumulated in double, returned as the float32 TF would give
    // within rounding).
    virtual double operator()(const Tensor& weights) const = 0;
};

// "l1" → L1L2(l1=0.01), "l2" → L1L2(l2=0.01), "l1_l2" → L1L2(0.01, 0.01), "L1L2" → L1L2(0, 0),
// "L1"/"L2" classes (default 0.01), or {"class_name", "config"}. JSON null → nullptr. Anything else
// is a keel::Error naming `where` and `argument`.
std::shared_ptr<const Regularizer> get_regularizer(const nlohmann::json& identifier,
                                                   std::string_view where,
                                                   std::string_view argument);

nlohmann::json serialize(const Regularizer& regularizer);

}  // namespace keel::keras
