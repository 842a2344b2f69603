#include <keel/layers/keras/constraints.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>

#include "layers/keras/config_reader.hpp"

// TF 1.15's keras/constraints.py with backend.py's clip and sqrt and K.epsilon() = 1e-7. Each
// formula is evaluated in float32 operation by operation, as TF's graph does, so results agree
// with TF's to float rounding; only the sums of squares are accumulated in double (TF's float32
// reduction order is not reproducible anyway) and rounded once to float32.
namespace keel::keras {
namespace {

using detail::ConfigReader;
using detail::Identifier;
using detail::Number;

constexpr float kEpsilon = 1e-7f;  // K.epsilon() as the float32 constant TF adds

// Keras' `axis`: an int, a list of ints, or None (every axis), checked against the weights' rank
// only when the constraint is applied, as tf.reduce_sum does.
struct Axis {
    nlohmann::json json;
    std::optional<std::vector<std::int64_t>> axes;  // nullopt: all axes
};

Axis read_axis(ConfigReader& reader) {
    const nlohmann::json* value = reader.take("axis");
    if (value == nullptr) {
        return {0, std::vector<std::int64_t>{0}};
    }
    if (value->is_null()) {
        return {nullptr, std::nullopt};
    }
    constexpr std::string_view kExpected = "an integer, a list of integers or null";
    if (value->is_number_integer()) {
        return {*value, std::vector<std::int64_t>{value->get<std::int64_t>()}};
    }
    if (!value->is_array()) {
        reader.fail("axis", *value, kExpected);
    }
    std::vector<std::int64_t> axes;
    for (const nlohmann::json& entry : *value) {
        if (!entry.is_number_integer()) {
            reader.fail("axis", *value, kExpected);
        }
        axes.push_back(entry.get<std::int64_t>());
    }
    return {*value, std::move(axes)};
}

// Which dimensions the norm sums over; tf.reduce_sum's rules: axes in [-rank, rank), no repeats.
std::vector<bool> reduced_dimensions(const Axis& axis, const Shape& shape, std::string_view where,
                                     std::string_view class_name) {
    const auto rank = static_cast<std::int64_t>(shape.size());
    std::vector<bool> reduced(shape.size(), !axis.axes.has_value());
    if (!axis.axes) {
        return reduced;
    }
    for (const std::int64_t requested : *axis.axes) {
        const std::int64_t resolved = requested < 0 ? requested + rank : requested;
        if (resolved < 0 || resolved >= rank || reduced[static_cast<std::size_t>(resolved)]) {
            throw invalid_argument(
                where, std::string(class_name) + " axis", detail::describe(axis.json),
                "distinct axes in [-" + std::to_string(rank) + ", " + std::to_string(rank) +
                    ") for weights of shape " + shape_to_string(shape));
        }
        reduced[static_cast<std::size_t>(resolved)] = true;
    }
    return reduced;
}

// sqrt(sum(w^2)) over the reduced dimensions with kept dims: one norm per slice, and the slice
// each element belongs to.
struct Norms {
    std::vector<float> per_slice;
    std::vector<std::size_t> slice_of;
};

Norms compute_norms(const std::vector<float>& weights, const Shape& shape,
                    const std::vector<bool>& reduced) {
    // Row-major strides of the kept-dims shape, zero along reduced dimensions.
    std::vector<std::size_t> slice_stride(shape.size(), 0);
    std::size_t slices = 1;
    for (std::size_t d = shape.size(); d-- > 0;) {
        if (!reduced[d]) {
            slice_stride[d] = slices;
            slices *= static_cast<std::size_t>(shape[d]);
        }
    }
    std::vector<std::size_t> slice_of(weights.size(), 0);
    std::vector<double> sums(slices, 0.0);
    for (std::size_t flat = 0; flat < weights.size(); ++flat) {
        std::size_t remainder = flat;
        std::size_t slice = 0;
        for (std::size_t d = shape.size(); d-- > 0;) {
            const auto extent = static_cast<std::size_t>(shape[d]);
            slice += (remainder % extent) * slice_stride[d];
            remainder /= extent;
        }
        slice_of[flat] = slice;
        const float square = weights[flat] * weights[flat];  // math_ops.square in float32
        sums[slice] += square;
    }
    std::vector<float> per_slice;
    per_slice.reserve(slices);
    for (const double sum : sums) {
        // K.sqrt clips its argument to [0, inf) first; a sum of squares already is.
        per_slice.push_back(std::sqrt(static_cast<float>(sum)));
    }
    return {std::move(per_slice), std::move(slice_of)};
}

// K.clip: a bound above below the lower one is raised to it (compared in double, as in Python),
// then both become float32 constants; clip_by_value takes the minimum first, then the maximum.
float clip(float value, double low, double high) {
    if (high < low) {
        high = low;
    }
    return std::max(std::min(value, static_cast<float>(high)), static_cast<float>(low));
}

// Multiplies every element by its slice's factor, factor = desired(norm) / (epsilon + norm).
template <typename Desired>
Tensor rescale(const Tensor& weights, const Axis& axis, std::string_view where,
               std::string_view class_name, Desired desired) {
    const std::vector<float> values = weights.to_floats();
    const Norms norms = compute_norms(values, weights.shape(),
                                      reduced_dimensions(axis, weights.shape(), where, class_name));
    std::vector<float> factors;
    factors.reserve(norms.per_slice.size());
    for (const float norm : norms.per_slice) {
        const float numerator = desired(norm);
        const float denominator = kEpsilon + norm;
        factors.push_back(numerator / denominator);
    }
    std::vector<float> result(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
        result[i] = values[i] * factors[norms.slice_of[i]];
    }
    return Tensor::from_floats(weights.shape(), result);
}

class MaxNorm final : public Constraint {
  public:
    MaxNorm(std::optional<Number> max_value, Axis axis)
        : max_value_(std::move(max_value)), axis_(std::move(axis)) {}

    std::string class_name() const override { return "MaxNorm"; }
    nlohmann::json get_config() const override {
        return {{"max_value", max_value_ ? max_value_->json : nlohmann::json(nullptr)},
                {"axis", axis_.json}};
    }

    // K.clip takes a None upper bound as +inf.
    Tensor operator()(const Tensor& weights, std::string_view where) const override {
        const double high =
            max_value_ ? max_value_->value : std::numeric_limits<double>::infinity();
        return rescale(weights, axis_, where, "MaxNorm",
                       [high](float norm) { return clip(norm, 0.0, high); });
    }

  private:
    std::optional<Number> max_value_;
    Axis axis_;
};

class NonNeg final : public Constraint {
  public:
    std::string class_name() const override { return "NonNeg"; }
    nlohmann::json get_config() const override { return nlohmann::json::object(); }

    // w * cast(w >= 0): negatives become -0.0 and NaN stays NaN, as in TF.
    Tensor operator()(const Tensor& weights, std::string_view) const override {
        std::vector<float> values = weights.to_floats();
        for (float& value : values) {
            value = value * (value >= 0.0f ? 1.0f : 0.0f);
        }
        return Tensor::from_floats(weights.shape(), values);
    }
};

class UnitNorm final : public Constraint {
  public:
    explicit UnitNorm(Axis axis) : axis_(std::move(axis)) {}

    std::string class_name() const override { return "UnitNorm"; }
    nlohmann::json get_config() const override { return {{"axis", axis_.json}}; }

    // Keras divides by (epsilon + norm) rather than multiplying by a factor.
    Tensor operator()(const Tensor& weights, std::string_view where) const override {
        const std::vector<float> values = weights.to_floats();
        const Norms norms = compute_norms(
            values, weights.shape(), reduced_dimensions(axis_, weights.shape(), where, "UnitNorm"));
        std::vector<float> result(values.size());
        for (std::size_t i = 0; i < values.size(); ++i) {
            result[i] = values[i] / (kEpsilon + norms.per_slice[norms.slice_of[i]]);
        }
        return Tensor::from_floats(weights.shape(), result);
    }

  private:
    Axis axis_;
};

class MinMaxNorm final : public Constraint {
  public:
    MinMaxNorm(Number min_value, std::optional<Number> max_value, Number rate, Axis axis)
        : min_value_(std::move(min_value)),
          max_value_(std::move(max_value)),
          rate_(std::move(rate)),
          axis_(std::move(axis)) {}

    std::string class_name() const override { return "MinMaxNorm"; }
    nlohmann::json get_config() const override {
        return {{"min_value", min_value_.json},
                {"max_value", max_value_ ? max_value_->json : nlohmann::json(nullptr)},
                {"rate", rate_.json},
                {"axis", axis_.json}};
    }

    // desired = rate * clip(norm, min, max) + (1 - rate) * norm, where Python forms 1 - rate in
    // double before TF turns it into a float32 constant.
    Tensor operator()(const Tensor& weights, std::string_view where) const override {
        const double low = min_value_.value;
        const double high =
            max_value_ ? max_value_->value : std::numeric_limits<double>::infinity();
        const auto rate = static_cast<float>(rate_.value);
        const auto keep = static_cast<float>(1.0 - rate_.value);
        return rescale(weights, axis_, where, "MinMaxNorm", [=](float norm) {
            const float clipped = rate * clip(norm, low, high);
            const float kept = keep * norm;
            return clipped + kept;
        });
    }

  private:
    Number min_value_;
    std::optional<Number> max_value_;
    Number rate_;
    Axis axis_;
};

// TF 1.15's RadialConstraint, as its code behaves (its docstring example shows the reverse):
// each (rows, cols) kernel is rebuilt from its diagonal. With s = rows / 2, the central block
// (1x1 for odd sizes, 2x2 for even ones) takes kernel[s-1][s-1], and the ring d steps outside it
// takes kernel[s+d-1][s+d-1]. The code measures only the rows, so non-square kernels fail in TF
// (in its final reshape), and so does a 1x1 kernel, whose central slice is empty.
class RadialConstraint final : public Constraint {
  public:
    std::string class_name() const override { return "RadialConstraint"; }
    nlohmann::json get_config() const override { return nlohmann::json::object(); }

    Tensor operator()(const Tensor& weights, std::string_view where) const override {
        const Shape& shape = weights.shape();
        if (shape.size() != 4) {
            throw shape_mismatch(where, "RadialConstraint weights shape", shape_to_string(shape),
                                 "rank 4 (rows, cols, input_depth, output_depth)");
        }
        if (shape[0] != shape[1] || shape[0] < 2) {
            throw shape_mismatch(where, "RadialConstraint weights shape", shape_to_string(shape),
                                 "square kernels of at least 2x2 (rows == cols >= 2)");
        }
        const auto size = static_cast<std::size_t>(shape[0]);
        const auto depth = static_cast<std::size_t>(shape[2] * shape[3]);
        const std::size_t start = size / 2;
        const bool odd = size % 2 == 1;
        // Chebyshev distance from the centre in rings; the central block is ring 0 for odd
        // sizes and ring 1 for even ones (where both middle rows count as distance 1).
        const auto distance = [&](std::size_t index) -> std::size_t {
            if (odd) {
                return index >= start ? index - start : start - index;
            }
            return index >= start ? index - start + 1 : start - index;
        };
        const std::size_t central_ring = odd ? 0 : 1;

        const std::vector<float> values = weights.to_floats();
        std::vector<float> result(values.size());
        for (std::size_t row = 0; row < size; ++row) {
            for (std::size_t column = 0; column < size; ++column) {
                const std::size_t ring = std::max(distance(row), distance(column));
                const std::size_t source = ring == central_ring ? start - 1 : start + ring - 1;
                const std::size_t from = (source * size + source) * depth;
                const std::size_t to = (row * size + column) * depth;
                std::copy_n(values.begin() + static_cast<std::ptrdiff_t>(from), depth,
                            result.begin() + static_cast<std::ptrdiff_t>(to));
            }
        }
        return Tensor::from_floats(shape, result);
    }
};

std::shared_ptr<const Constraint> make_max_norm(ConfigReader& reader) {
    std::optional<Number> max_value = reader.optional_number("max_value", Number::of_integer(2));
    Axis axis = read_axis(reader);
    reader.finish();
    return std::make_shared<const MaxNorm>(std::move(max_value), std::move(axis));
}

std::shared_ptr<const Constraint> make_non_neg(ConfigReader& reader) {
    reader.finish();
    return std::make_shared<const NonNeg>();
}

std::shared_ptr<const Constraint> make_unit_norm(ConfigReader& reader) {
    Axis axis = read_axis(reader);
    reader.finish();
    return std::make_shared<const UnitNorm>(std::move(axis));
}

std::shared_ptr<const Constraint> make_min_max_norm(ConfigReader& reader) {
    Number min_value = reader.number("min_value", Number::of(0.0));
    std::optional<Number> max_value = reader.optional_number("max_value", Number::of(1.0));
    Number rate = reader.number("rate", Number::of(1.0));
    Axis axis = read_axis(reader);
    reader.finish();
    return std::make_shared<const MinMaxNorm>(std::move(min_value), std::move(max_value),
                                              std::move(rate), std::move(axis));
}

std::shared_ptr<const Constraint> make_radial_constraint(ConfigReader& reader) {
    reader.finish();
    return std::make_shared<const RadialConstraint>();
}

using Factory = std::shared_ptr<const Constraint> (*)(ConfigReader&);

struct Entry {
    std::string_view name;
    std::string_view canonical;
    Factory factory;
};

constexpr std::array kEntries = {
    Entry{"MaxNorm", "MaxNorm", make_max_norm},
    Entry{"max_norm", "MaxNorm", make_max_norm},
    Entry{"maxnorm", "MaxNorm", make_max_norm},
    Entry{"NonNeg", "NonNeg", make_non_neg},
    Entry{"non_neg", "NonNeg", make_non_neg},
    Entry{"nonneg", "NonNeg", make_non_neg},
    Entry{"UnitNorm", "UnitNorm", make_unit_norm},
    Entry{"unit_norm", "UnitNorm", make_unit_norm},
    Entry{"unitnorm", "UnitNorm", make_unit_norm},
    Entry{"MinMaxNorm", "MinMaxNorm", make_min_max_norm},
    Entry{"min_max_norm", "MinMaxNorm", make_min_max_norm},
    Entry{"RadialConstraint", "RadialConstraint", make_radial_constraint},
    Entry{"radial_constraint", "RadialConstraint", make_radial_constraint},
};

}  // namespace

std::shared_ptr<const Constraint> get_constraint(const nlohmann::json& identifier,
                                                 std::string_view where,
                                                 std::string_view argument) {
    if (identifier.is_null()) {
        return nullptr;
    }
    const Identifier parsed = detail::parse_identifier(identifier, where, argument, "constraint");
    for (const Entry& entry : kEntries) {
        if (entry.name == parsed.class_name) {
            ConfigReader reader(parsed, where, argument, std::string(entry.canonical));
            return entry.factory(reader);
        }
    }
    throw invalid_argument(where, argument, detail::describe(parsed.class_name),
                           "a constraint name: MaxNorm/max_norm/maxnorm, NonNeg/non_neg/nonneg, "
                           "UnitNorm/unit_norm/unitnorm, MinMaxNorm/min_max_norm, "
                           "RadialConstraint/radial_constraint");
}

nlohmann::json serialize(const Constraint& constraint) {
    return {{"class_name", constraint.class_name()}, {"config", constraint.get_config()}};
}

}  // namespace keel::keras
