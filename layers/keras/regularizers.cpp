#include <keel/layers/keras/regularizers.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>

#include "layers/keras/config_reader.hpp"

// TF 1.15's keras/regularizers.py: one class, L1L2, whose factors are cast to float32, and the
// functions l1, l2, l1_l2 (0.01 defaults) that Keras' get() treats as classes; plus tf_keras' L1
// and L2 classes and its checks (finite factors; None meaning the default).
namespace keel::keras {
namespace {

using detail::ConfigReader;
using detail::Identifier;
using detail::Number;

constexpr double kShortcutFactor = 0.01;

enum class Kind { l1_l2, l1, l2 };

class L1L2Regularizer final : public Regularizer {
  public:
    L1L2Regularizer(Kind kind, float l1, float l2) : kind_(kind), l1_(l1), l2_(l2) {}

    std::string class_name() const override {
        switch (kind_) {
            case Kind::l1:
                return "L1";
            case Kind::l2:
                return "L2";
            case Kind::l1_l2:
                break;
        }
        return "L1L2";
    }

    // Keras reports float(float32 factor), e.g. 0.009999999776482582 for 0.01.
    nlohmann::json get_config() const override {
        switch (kind_) {
            case Kind::l1:
                return {{"l1", static_cast<double>(l1_)}};
            case Kind::l2:
                return {{"l2", static_cast<double>(l2_)}};
            case Kind::l1_l2:
                break;
        }
        return {{"l1", static_cast<double>(l1_)}, {"l2", static_cast<double>(l2_)}};
    }

    // A term whose factor is zero is left out, as Keras does, so it adds nothing even when the
    // weights hold infinities.
    double operator()(const Tensor& weights) const override {
        const Tensor values = weights.dtype() == DType::f32 ? weights : weights.to(DType::f32);
        const float* data = values.data_as<float>();
        const std::int64_t count = values.element_count();
        double penalty = 0.0;
        if (l1_ != 0.0f) {
            double sum = 0.0;
            for (std::int64_t i = 0; i < count; ++i) {
                sum += std::abs(static_cast<double>(data[i]));
            }
            penalty += static_cast<double>(l1_) * sum;
        }
        if (l2_ != 0.0f) {
            double sum = 0.0;
            for (std::int64_t i = 0; i < count; ++i) {
                const auto value = static_cast<double>(data[i]);
                sum += value * value;
            }
            penalty += static_cast<double>(l2_) * sum;
        }
        return penalty;
    }

  private:
    Kind kind_;
    float l1_;
    float l2_;
};

// Keras' cast_to_floatx: the factor lives as float32 from here on. tf_keras rejects non-finite
// factors; a finite double beyond float32's range would become one, so it is rejected too.
float to_factor(ConfigReader& reader, std::string_view key, const Number& number) {
    const auto factor = static_cast<float>(number.value);
    if (!std::isfinite(factor)) {
        reader.fail(key, number.json, "a finite number within float32 range");
    }
    return factor;
}

// A factor under `key`; absent or null (tf_keras' None) means `fallback`.
float read_factor(ConfigReader& reader, std::string_view key, double fallback) {
    const std::optional<Number> number = reader.optional_number(key, Number::of(fallback));
    return to_factor(reader, key, number.value_or(Number::of(fallback)));
}

// TF 1.15's l1(l=0.01)/l2(l=0.01) name their argument "l"; tf_keras' L1/L2 call it "l1"/"l2" and
// still take "l". Both spellings at once would be ambiguous.
float read_single_factor(ConfigReader& reader, std::string_view key) {
    const nlohmann::json* legacy = reader.take("l");
    const nlohmann::json* modern = reader.take(key);
    if (legacy != nullptr && modern != nullptr) {
        reader.fail("l", *legacy, "either \"l\" or \"" + std::string(key) + "\", not both");
    }
    if (legacy == nullptr) {
        return read_factor(reader, key, kShortcutFactor);
    }
    return read_factor(reader, "l", kShortcutFactor);
}

std::shared_ptr<const Regularizer> make(Kind kind, float l1, float l2) {
    return std::make_shared<const L1L2Regularizer>(kind, l1, l2);
}

std::shared_ptr<const Regularizer> make_l1_shortcut(ConfigReader& reader) {
    const float l1 = read_single_factor(reader, "l1");
    reader.finish();
    return make(Kind::l1_l2, l1, 0.0f);
}

std::shared_ptr<const Regularizer> make_l2_shortcut(ConfigReader& reader) {
    const float l2 = read_single_factor(reader, "l2");
    reader.finish();
    return make(Kind::l1_l2, 0.0f, l2);
}

std::shared_ptr<const Regularizer> make_l1_l2_shortcut(ConfigReader& reader) {
    const float l1 = read_factor(reader, "l1", kShortcutFactor);
    const float l2 = read_factor(reader, "l2", kShortcutFactor);
    reader.finish();
    return make(Kind::l1_l2, l1, l2);
}

// The class itself defaults to no penalty at all.
std::shared_ptr<const Regularizer> make_l1_l2_class(ConfigReader& reader) {
    const float l1 = read_factor(reader, "l1", 0.0);
    const float l2 = read_factor(reader, "l2", 0.0);
    reader.finish();
    return make(Kind::l1_l2, l1, l2);
}

std::shared_ptr<const Regularizer> make_l1_class(ConfigReader& reader) {
    const float l1 = read_single_factor(reader, "l1");
    reader.finish();
    return make(Kind::l1, l1, 0.0f);
}

std::shared_ptr<const Regularizer> make_l2_class(ConfigReader& reader) {
    const float l2 = read_single_factor(reader, "l2");
    reader.finish();
    return make(Kind::l2, 0.0f, l2);
}

using Factory = std::shared_ptr<const Regularizer> (*)(ConfigReader&);

struct Entry {
    std::string_view name;
    Factory factory;
};

constexpr std::array kEntries = {
    Entry{"l1", make_l1_shortcut},       Entry{"l2", make_l2_shortcut},
    Entry{"l1_l2", make_l1_l2_shortcut}, Entry{"L1L2", make_l1_l2_class},
    Entry{"L1", make_l1_class},          Entry{"L2", make_l2_class},
};

}  // namespace

std::shared_ptr<const Regularizer> get_regularizer(const nlohmann::json& identifier,
                                                   std::string_view where,
                                                   std::string_view argument) {
    if (identifier.is_null()) {
        return nullptr;
    }
    const Identifier parsed = detail::parse_identifier(identifier, where, argument, "regularizer");
    for (const Entry& entry : kEntries) {
        if (entry.name == parsed.class_name) {
            ConfigReader reader(parsed, where, argument, parsed.class_name);
            return entry.factory(reader);
        }
    }
    throw invalid_argument(where, argument, detail::describe(parsed.class_name),
                           "a regularizer name: l1, l2, l1_l2, L1L2, L1, L2");
}

nlohmann::json serialize(const Regularizer& regularizer) {
    return {{"class_name", regularizer.class_name()}, {"config", regularizer.get_config()}};
}

}  // namespace keel::keras
