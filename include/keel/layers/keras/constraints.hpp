#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include <keel/engine/tensor.hpp>

namespace keel::keras {

// A Keras weight constraint: a projection an optimizer applies after each update of the weights.
class Constraint {
  public:
    virtual ~Constraint() = default;
    virtual std::string class_name() const = 0;
    virtual nlohmann::json get_config() const = 0;
    // The projected weights (a new f32 tensor of the same shape). Throws keel::Error naming
    // `where` when the constraint cannot apply to that shape (RadialConstraint needs rank 4).
    virtual Tensor operator()(const Tensor& weights, std::string_view where) const = 0;
};

// max_norm/MaxNorm/maxnorm, non_neg/NonNeg/nonneg, unit_norm/UnitNorm/unitnorm,
// min_max_norm/MinMaxNorm, radial_constraint/RadialConstraint, or {"class_name", "config"}.
// JSON null → nullptr. Anything else is a keel::Error naming `where` and `argument`.
std::shared_ptr<const Constraint> get_constraint(const nlohmann::json& identifier,
                                                 std::string_view where, std::string_view argument);

nlohmann::json serialize(const Constraint& constraint);

}  // namespace keel::keras
