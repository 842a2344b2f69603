#include <keel/layers/keras/initializers.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>

#include "layers/keras/config_reader.hpp"

// The classes TF 1.15 builds with V2 behaviour (ops/init_ops_v2.py, which Keras' deserialize uses
// when TF2 behaviour is on): names, aliases, defaults, config keys and argument checks as there.
// he_*/lecun_* are functions returning a VarianceScaling in TF 1.15, so they serialize as
// VarianceScaling; tf_keras' class names HeNormal, LecunUniform, ... are accepted on input.
namespace keel::keras {
namespace {

using detail::ConfigReader;
using detail::Identifier;
using detail::Number;
using detail::Seed;

// Draws come from std::mt19937_64, whose output sequence the C++ standard fixes, through
// transforms written here: the standard distributions are implementation-defined, so their values
// for a given seed could change with the library version.
class RandomStream {
  public:
    explicit RandomStream(std::uint64_t seed) : engine_(seed) {}

    // Uniform on [0, 1), 53 random bits.
    double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

    // Marsaglia's polar method; both values of each pair are used. It needs only sqrt (exact in
    // IEEE arithmetic) and log from the maths library, no sine or cosine.
    double standard_normal() {
        if (spare_) {
            const double value = *spare_;
            spare_.reset();
            return value;
        }
        double u = 0.0;
        double v = 0.0;
        double radius_squared = 0.0;
        do {
            u = 2.0 * uniform() - 1.0;
            v = 2.0 * uniform() - 1.0;
            radius_squared = u * u + v * v;
        } while (radius_squared >= 1.0 || radius_squared == 0.0);
        const double factor = std::sqrt(-2.0 * std::log(radius_squared) / radius_squared);
        spare_ = v * factor;
        return u * factor;
    }

    // TF's truncated normal redraws every value two or more standard deviations out.
    double truncated_standard_normal() {
        constexpr double kTruncation = 2.0;
        double value = standard_normal();
        while (std::abs(value) >= kTruncation) {
            value = standard_normal();
        }
        return value;
    }

  private:
    std::mt19937_64 engine_;
    std::optional<double> spare_;
};

// A null seed means TF's stateful random ops: fresh values on every call.
RandomStream make_stream(const Seed& seed) {
    if (seed.value) {
        return RandomStream(static_cast<std::uint64_t>(*seed.value));
    }
    std::random_device device;
    const auto high = static_cast<std::uint64_t>(device());
    const auto low = static_cast<std::uint64_t>(device());
    return RandomStream((high << 32) ^ low);
}

// Writes the values of one call; shape is already validated, values.size() == element count.
using Fill =
    std::function<void(const Shape& shape, std::span<float> values, std::string_view where)>;

class KerasInitializer final : public Initializer {
  public:
    KerasInitializer(std::string class_name, nlohmann::json config, Fill fill)
        : class_name_(std::move(class_name)), config_(std::move(config)), fill_(std::move(fill)) {}

    std::string class_name() const override { return class_name_; }
    nlohmann::json get_config() const override { return config_; }

    Tensor operator()(const Shape& shape, std::string_view where) const override {
        const std::int64_t count = element_count(shape, where);
        Tensor result(shape, DType::f32);
        fill_(shape, std::span<float>(result.data_as<float>(), static_cast<std::size_t>(count)),
              where);
        return result;
    }

  private:
    std::string class_name_;
    nlohmann::json config_;
    Fill fill_;
};

std::shared_ptr<const Initializer> make(std::string class_name, nlohmann::json config, Fill fill) {
    return std::make_shared<const KerasInitializer>(std::move(class_name), std::move(config),
                                                    std::move(fill));
}

nlohmann::json seed_config(const Seed& seed) { return {{"seed", seed.json}}; }

Fill constant_fill(float value) {
    return [value](const Shape&, std::span<float> values, std::string_view) {
        std::ranges::fill(values, value);
    };
}

// Values are computed in double and rounded once to f32.
Fill uniform_fill(double minval, double maxval, Seed seed) {
    return [minval, maxval, seed](const Shape&, std::span<float> values, std::string_view) {
        RandomStream stream = make_stream(seed);
        for (float& value : values) {
            value = static_cast<float>(minval + (maxval - minval) * stream.uniform());
        }
    };
}

Fill normal_fill(double mean, double stddev, Seed seed) {
    return [mean, stddev, seed](const Shape&, std::span<float> values, std::string_view) {
        RandomStream stream = make_stream(seed);
        for (float& value : values) {
            value = static_cast<float>(mean + stddev * stream.standard_normal());
        }
    };
}

Fill truncated_normal_fill(double mean, double stddev, Seed seed) {
    return [mean, stddev, seed](const Shape&, std::span<float> values, std::string_view) {
        RandomStream stream = make_stream(seed);
        for (float& value : values) {
            value = static_cast<float>(mean + stddev * stream.truncated_standard_normal());
        }
    };
}

// ----- Zeros, Ones, Constant -----

std::shared_ptr<const Initializer> make_zeros(ConfigReader& reader) {
    reader.ignore_dtype();
    reader.finish();
    return make("Zeros", nlohmann::json::object(), constant_fill(0.0f));
}

std::shared_ptr<const Initializer> make_ones(ConfigReader& reader) {
    reader.ignore_dtype();
    reader.finish();
    return make("Ones", nlohmann::json::object(), constant_fill(1.0f));
}

// The dimensions of a nested list, read along its first elements.
std::vector<std::size_t> nested_dims(const nlohmann::json& value) {
    std::vector<std::size_t> dims;
    const nlohmann::json* node = &value;
    while (node->is_array()) {
        dims.push_back(node->size());
        if (node->empty()) {
            break;
        }
        node = &node->front();
    }
    return dims;
}

// Flattens a rectangular nested list of numbers row-major, as NumPy reads it; false if ragged or
// holding anything but numbers (NumPy would make an object array, which TF cannot convert).
bool flatten_rectangular(const nlohmann::json& node, std::span<const std::size_t> dims,
                         std::vector<double>& flat) {
    if (dims.empty()) {
        if (!node.is_number()) {
            return false;
        }
        flat.push_back(node.get<double>());
        return true;
    }
    if (!node.is_array() || node.size() != dims.front()) {
        return false;
    }
    return std::ranges::all_of(node, [&](const nlohmann::json& child) {
        return flatten_rectangular(child, dims.subspan(1), flat);
    });
}

std::shared_ptr<const Initializer> make_constant(ConfigReader& reader) {
    reader.ignore_dtype();
    const nlohmann::json* given = reader.take("value");
    const nlohmann::json value = given == nullptr ? nlohmann::json(0) : *given;
    reader.finish();

    std::vector<double> flat;
    if (!flatten_rectangular(value, nested_dims(value), flat)) {
        reader.fail("value", value, "a number or a rectangular (nested) list of numbers");
    }
    std::vector<float> values;
    values.reserve(flat.size());
    for (const double number : flat) {
        const auto narrowed = static_cast<float>(number);
        if (!std::isfinite(narrowed)) {
            reader.fail("value", value, "finite values in float32 range");
        }
        values.push_back(narrowed);
    }
    // V2's Constant builds tf.constant(value, shape): one value is broadcast, a list of exactly
    // the element count is reshaped, anything else raises (the V1 class would pad with the last
    // value instead; keel follows V2).
    Fill fill = [values = std::move(values)](const Shape& shape, std::span<float> out,
                                             std::string_view where) {
        if (values.size() == 1) {
            std::ranges::fill(out, values.front());
        } else if (values.size() == out.size()) {
            std::ranges::copy(values, out.begin());
        } else {
            throw shape_mismatch(
                where, "Constant initializer value", std::to_string(values.size()) + " values",
                "1 value or exactly " + std::to_string(out.size()) +
                    " (the element count of shape " + shape_to_string(shape) + ")");
        }
    };
    return make("Constant", {{"value", value}}, std::move(fill));
}

// ----- Random distributions -----

std::shared_ptr<const Initializer> make_random_uniform(ConfigReader& reader) {
    reader.ignore_dtype();
    const Number minval = reader.number("minval", Number::of(-0.05));
    const Number maxval = reader.number("maxval", Number::of(0.05));
    const Seed seed = reader.seed();
    reader.finish();
    return make("RandomUniform",
                {{"minval", minval.json}, {"maxval", maxval.json}, {"seed", seed.json}},
                uniform_fill(minval.value, maxval.value, seed));
}

std::shared_ptr<const Initializer> make_random_normal(ConfigReader& reader) {
    reader.ignore_dtype();
    const Number mean = reader.number("mean", Number::of(0.0));
    const Number stddev = reader.number("stddev", Number::of(0.05));
    const Seed seed = reader.seed();
    reader.finish();
    return make("RandomNormal", {{"mean", mean.json}, {"stddev", stddev.json}, {"seed", seed.json}},
                normal_fill(mean.value, stddev.value, seed));
}

std::shared_ptr<const Initializer> make_truncated_normal(ConfigReader& reader) {
    reader.ignore_dtype();
    const Number mean = reader.number("mean", Number::of(0.0));
    const Number stddev = reader.number("stddev", Number::of(0.05));
    const Seed seed = reader.seed();
    reader.finish();
    return make("TruncatedNormal",
                {{"mean", mean.json}, {"stddev", stddev.json}, {"seed", seed.json}},
                truncated_normal_fill(mean.value, stddev.value, seed));
}

// ----- Variance scaling family -----

struct Fans {
    double fan_in;
    double fan_out;
};

// TF's _compute_fans: a kernel's last two dimensions are (input depth, output depth) and every
// leading dimension is receptive field.
Fans compute_fans(const Shape& shape) {
    const auto rank = shape.size();
    if (rank == 0) {
        return {1.0, 1.0};
    }
    if (rank == 1) {
        return {static_cast<double>(shape[0]), static_cast<double>(shape[0])};
    }
    if (rank == 2) {
        return {static_cast<double>(shape[0]), static_cast<double>(shape[1])};
    }
    double receptive_field = 1.0;
    for (std::size_t i = 0; i + 2 < rank; ++i) {
        receptive_field *= static_cast<double>(shape[i]);
    }
    return {static_cast<double>(shape[rank - 2]) * receptive_field,
            static_cast<double>(shape[rank - 1]) * receptive_field};
}

enum class FanMode { fan_in, fan_out, fan_avg };
enum class Distribution { truncated_normal, untruncated_normal, uniform };

// The standard deviation of a standard normal truncated to [-2, 2]
// (scipy.stats.truncnorm.std(a=-2, b=2)), the constant TF divides by.
constexpr double kTruncatedNormalStddev = 0.87962566103423978;

Fill variance_scaling_fill(double scale, FanMode mode, Distribution distribution, Seed seed) {
    return [=](const Shape& shape, std::span<float> values, std::string_view where) {
        const Fans fans = compute_fans(shape);
        double n = fans.fan_in;
        if (mode == FanMode::fan_out) {
            n = fans.fan_out;
        } else if (mode == FanMode::fan_avg) {
            n = (fans.fan_in + fans.fan_out) / 2.0;
        }
        const double scaled = scale / std::max(1.0, n);
        switch (distribution) {
            case Distribution::truncated_normal:
                truncated_normal_fill(0.0, std::sqrt(scaled) / kTruncatedNormalStddev, seed)(
                    shape, values, where);
                break;
            case Distribution::untruncated_normal:
                normal_fill(0.0, std::sqrt(scaled), seed)(shape, values, where);
                break;
            case Distribution::uniform: {
                const double limit = std::sqrt(3.0 * scaled);
                uniform_fill(-limit, limit, seed)(shape, values, where);
                break;
            }
        }
    };
}

std::string_view mode_name(FanMode mode) {
    switch (mode) {
        case FanMode::fan_in:
            return "fan_in";
        case FanMode::fan_out:
            return "fan_out";
        case FanMode::fan_avg:
            return "fan_avg";
    }
    return "fan_in";
}

std::string_view distribution_name(Distribution distribution) {
    switch (distribution) {
        case Distribution::truncated_normal:
            return "truncated_normal";
        case Distribution::untruncated_normal:
            return "untruncated_normal";
        case Distribution::uniform:
            return "uniform";
    }
    return "truncated_normal";
}

std::shared_ptr<const Initializer> variance_scaling(const Number& scale, FanMode mode,
                                                    Distribution distribution, const Seed& seed) {
    return make("VarianceScaling",
                {{"scale", scale.json},
                 {"mode", mode_name(mode)},
                 {"distribution", distribution_name(distribution)},
                 {"seed", seed.json}},
                variance_scaling_fill(scale.value, mode, distribution, seed));
}

std::shared_ptr<const Initializer> make_variance_scaling(ConfigReader& reader) {
    reader.ignore_dtype();
    const Number scale = reader.number("scale", Number::of(1.0));
    if (scale.value <= 0.0) {
        reader.fail("scale", scale.json, "a number > 0");
    }
    const std::string mode_text = reader.string("mode", "fan_in");
    FanMode mode = FanMode::fan_in;
    if (mode_text == "fan_out") {
        mode = FanMode::fan_out;
    } else if (mode_text == "fan_avg") {
        mode = FanMode::fan_avg;
    } else if (mode_text != "fan_in") {
        reader.fail("mode", mode_text, "one of \"fan_in\", \"fan_out\", \"fan_avg\"");
    }
    // TF lower-cases the distribution and takes keras-team's "normal" as truncated_normal.
    std::string distribution_text = reader.string("distribution", "truncated_normal");
    std::ranges::transform(distribution_text, distribution_text.begin(),
                           [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    Distribution distribution = Distribution::truncated_normal;
    if (distribution_text == "uniform") {
        distribution = Distribution::uniform;
    } else if (distribution_text == "untruncated_normal") {
        distribution = Distribution::untruncated_normal;
    } else if (distribution_text != "truncated_normal" && distribution_text != "normal") {
        reader.fail("distribution", distribution_text,
                    "one of \"truncated_normal\", \"untruncated_normal\", \"uniform\" (or "
                    "\"normal\", read as \"truncated_normal\")");
    }
    const Seed seed = reader.seed();
    reader.finish();
    return variance_scaling(scale, mode, distribution, seed);
}

// GlorotUniform and GlorotNormal are classes in TF 1.15 whose config is the seed alone.
std::shared_ptr<const Initializer> make_glorot(ConfigReader& reader, Distribution distribution) {
    reader.ignore_dtype();
    const Seed seed = reader.seed();
    reader.finish();
    const std::string name =
        distribution == Distribution::uniform ? "GlorotUniform" : "GlorotNormal";
    return make(name, seed_config(seed),
                variance_scaling_fill(1.0, FanMode::fan_avg, distribution, seed));
}

std::shared_ptr<const Initializer> make_glorot_uniform(ConfigReader& reader) {
    return make_glorot(reader, Distribution::uniform);
}

std::shared_ptr<const Initializer> make_glorot_normal(ConfigReader& reader) {
    return make_glorot(reader, Distribution::truncated_normal);
}

// he_* and lecun_* take only a seed and give a VarianceScaling.
std::shared_ptr<const Initializer> make_fan_in_scaling(ConfigReader& reader, double scale,
                                                       Distribution distribution) {
    reader.ignore_dtype();
    const Seed seed = reader.seed();
    reader.finish();
    return variance_scaling(Number::of(scale), FanMode::fan_in, distribution, seed);
}

std::shared_ptr<const Initializer> make_he_normal(ConfigReader& reader) {
    return make_fan_in_scaling(reader, 2.0, Distribution::truncated_normal);
}

std::shared_ptr<const Initializer> make_he_uniform(ConfigReader& reader) {
    return make_fan_in_scaling(reader, 2.0, Distribution::uniform);
}

std::shared_ptr<const Initializer> make_lecun_normal(ConfigReader& reader) {
    return make_fan_in_scaling(reader, 1.0, Distribution::truncated_normal);
}

std::shared_ptr<const Initializer> make_lecun_uniform(ConfigReader& reader) {
    return make_fan_in_scaling(reader, 1.0, Distribution::uniform);
}

// ----- Identity, Orthogonal -----

std::shared_ptr<const Initializer> make_identity(ConfigReader& reader) {
    reader.ignore_dtype();
    const Number gain = reader.number("gain", Number::of(1.0));
    reader.finish();
    // TF computes gain * eye(rows, cols) in float32, so off-diagonal zeros take gain's sign.
    const auto gain32 = static_cast<float>(gain.value);
    Fill fill = [gain32](const Shape& shape, std::span<float> values, std::string_view where) {
        if (shape.size() != 2) {
            throw shape_mismatch(where, "shape", shape_to_string(shape),
                                 "a 2-D shape for the Identity initializer");
        }
        const std::int64_t columns = shape[1];
        for (std::int64_t row = 0; row < shape[0]; ++row) {
            for (std::int64_t column = 0; column < columns; ++column) {
                values[static_cast<std::size_t>(row * columns + column)] =
                    gain32 * (row == column ? 1.0f : 0.0f);
            }
        }
    };
    return make("Identity", {{"gain", gain.json}}, std::move(fill));
}

// The Q factor of a thin QR decomposition of the row-major m x n matrix `a` (m >= n) by
// Householder reflections in double, with each column multiplied by the sign of R's diagonal
// entry as TF does: that makes Q unique, hence Haar-distributed for a Gaussian `a`. A zero
// diagonal entry (a rank-deficient draw, probability zero) zeroes its column, as TF's sign(0) = 0.
std::vector<double> orthogonal_factor(std::vector<double> a, std::size_t m, std::size_t n) {
    std::vector<double> reflectors(m * n, 0.0);  // column k holds v_k in rows k..m-1
    std::vector<double> diagonal(n, 0.0);
    for (std::size_t k = 0; k < n; ++k) {
        double norm_squared = 0.0;
        for (std::size_t i = k; i < m; ++i) {
            norm_squared += a[i * n + k] * a[i * n + k];
        }
        if (norm_squared == 0.0) {
            continue;  // nothing to reflect; R[k][k] = 0
        }
        const double norm = std::sqrt(norm_squared);
        // Reflecting onto -sign(x0)·|x| avoids cancellation in v0 = x0 - alpha.
        const double alpha = a[k * n + k] > 0.0 ? -norm : norm;
        double v_norm_squared = 0.0;
        for (std::size_t i = k; i < m; ++i) {
            const double v = i == k ? a[k * n + k] - alpha : a[i * n + k];
            reflectors[i * n + k] = v;
            v_norm_squared += v * v;
        }
        for (std::size_t j = k; j < n; ++j) {
            double dot = 0.0;
            for (std::size_t i = k; i < m; ++i) {
                dot += reflectors[i * n + k] * a[i * n + j];
            }
            const double factor = 2.0 * dot / v_norm_squared;
            for (std::size_t i = k; i < m; ++i) {
                a[i * n + j] -= factor * reflectors[i * n + k];
            }
        }
        diagonal[k] = alpha;
    }
    // Q = H_0 H_1 ... H_{n-1} applied to the first n columns of the identity, from the right end.
    std::vector<double> q(m * n, 0.0);
    for (std::size_t i = 0; i < n; ++i) {
        q[i * n + i] = 1.0;
    }
    for (std::size_t step = n; step-- > 0;) {
        double v_norm_squared = 0.0;
        for (std::size_t i = step; i < m; ++i) {
            v_norm_squared += reflectors[i * n + step] * reflectors[i * n + step];
        }
        if (v_norm_squared == 0.0) {
            continue;
        }
        for (std::size_t j = step; j < n; ++j) {
            double dot = 0.0;
            for (std::size_t i = step; i < m; ++i) {
                dot += reflectors[i * n + step] * q[i * n + j];
            }
            const double factor = 2.0 * dot / v_norm_squared;
            for (std::size_t i = step; i < m; ++i) {
                q[i * n + j] -= factor * reflectors[i * n + step];
            }
        }
    }
    for (std::size_t j = 0; j < n; ++j) {
        const double sign = diagonal[j] > 0.0 ? 1.0 : (diagonal[j] < 0.0 ? -1.0 : 0.0);
        for (std::size_t i = 0; i < m; ++i) {
            q[i * n + j] *= sign;
        }
    }
    return q;
}

std::shared_ptr<const Initializer> make_orthogonal(ConfigReader& reader) {
    reader.ignore_dtype();
    const Number gain = reader.number("gain", Number::of(1.0));
    const Seed seed = reader.seed();
    reader.finish();
    const auto gain32 = static_cast<float>(gain.value);
    Fill fill = [gain32, seed](const Shape& shape, std::span<float> values,
                               std::string_view where) {
        if (shape.size() < 2) {
            throw shape_mismatch(where, "shape", shape_to_string(shape),
                                 "rank >= 2 for the Orthogonal initializer");
        }
        // TF flattens to (prod(shape[:-1]), shape[-1]) and factors the tall orientation.
        if (values.empty()) {
            return;
        }
        const auto columns = static_cast<std::size_t>(shape.back());
        const std::size_t rows = values.size() / columns;
        const std::size_t m = std::max(rows, columns);
        const std::size_t n = std::min(rows, columns);
        RandomStream stream = make_stream(seed);
        std::vector<double> gaussian(m * n);
        for (double& value : gaussian) {
            value = stream.standard_normal();
        }
        const std::vector<double> q = orthogonal_factor(std::move(gaussian), m, n);
        const bool transposed = rows < columns;
        for (std::size_t row = 0; row < rows; ++row) {
            for (std::size_t column = 0; column < columns; ++column) {
                const double entry = transposed ? q[column * n + row] : q[row * n + column];
                values[row * columns + column] = gain32 * static_cast<float>(entry);
            }
        }
    };
    return make("Orthogonal", {{"gain", gain.json}, {"seed", seed.json}}, std::move(fill));
}

// ----- Name table -----

using Factory = std::shared_ptr<const Initializer> (*)(ConfigReader&);

struct Entry {
    std::string_view name;
    std::string_view canonical;  // the class the name stands for, for messages
    Factory factory;
};

constexpr std::array kEntries = {
    Entry{"Zeros", "Zeros", make_zeros},
    Entry{"zeros", "Zeros", make_zeros},
    Entry{"zero", "Zeros", make_zeros},
    Entry{"Ones", "Ones", make_ones},
    Entry{"ones", "Ones", make_ones},
    Entry{"one", "Ones", make_ones},
    Entry{"Constant", "Constant", make_constant},
    Entry{"constant", "Constant", make_constant},
    Entry{"RandomUniform", "RandomUniform", make_random_uniform},
    Entry{"random_uniform", "RandomUniform", make_random_uniform},
    Entry{"uniform", "RandomUniform", make_random_uniform},
    Entry{"RandomNormal", "RandomNormal", make_random_normal},
    Entry{"random_normal", "RandomNormal", make_random_normal},
    Entry{"normal", "RandomNormal", make_random_normal},
    Entry{"TruncatedNormal", "TruncatedNormal", make_truncated_normal},
    Entry{"truncated_normal", "TruncatedNormal", make_truncated_normal},
    Entry{"VarianceScaling", "VarianceScaling", make_variance_scaling},
    Entry{"GlorotUniform", "GlorotUniform", make_glorot_uniform},
    Entry{"glorot_uniform", "GlorotUniform", make_glorot_uniform},
    Entry{"GlorotNormal", "GlorotNormal", make_glorot_normal},
    Entry{"glorot_normal", "GlorotNormal", make_glorot_normal},
    Entry{"HeNormal", "he_normal", make_he_normal},
    Entry{"he_normal", "he_normal", make_he_normal},
    Entry{"HeUniform", "he_uniform", make_he_uniform},
    Entry{"he_uniform", "he_uniform", make_he_uniform},
    Entry{"LecunNormal", "lecun_normal", make_lecun_normal},
    Entry{"lecun_normal", "lecun_normal", make_lecun_normal},
    Entry{"LecunUniform", "lecun_uniform", make_lecun_uniform},
    Entry{"lecun_uniform", "lecun_uniform", make_lecun_uniform},
    Entry{"Identity", "Identity", make_identity},
    Entry{"identity", "Identity", make_identity},
    Entry{"Orthogonal", "Orthogonal", make_orthogonal},
    Entry{"orthogonal", "Orthogonal", make_orthogonal},
};

}  // namespace

std::shared_ptr<const Initializer> get_initializer(const nlohmann::json& identifier,
                                                   std::string_view where,
                                                   std::string_view argument) {
    if (identifier.is_null()) {
        return nullptr;
    }
    const Identifier parsed = detail::parse_identifier(identifier, where, argument, "initializer");
    for (const Entry& entry : kEntries) {
        if (entry.name == parsed.class_name) {
            ConfigReader reader(parsed, where, argument, std::string(entry.canonical));
            return entry.factory(reader);
        }
    }
    throw invalid_argument(
        where, argument, detail::describe(parsed.class_name),
        "an initializer name: Zeros/zeros/zero, Ones/ones/one, Constant/constant, "
        "RandomUniform/random_uniform/uniform, RandomNormal/random_normal/normal, "
        "TruncatedNormal/truncated_normal, VarianceScaling, GlorotUniform/glorot_uniform, "
        "GlorotNormal/glorot_normal, HeNormal/he_normal, HeUniform/he_uniform, "
        "LecunNormal/lecun_normal, LecunUniform/lecun_uniform, Identity/identity, "
        "Orthogonal/orthogonal");
}

nlohmann::json serialize(const Initializer& initializer) {
    return {{"class_name", initializer.class_name()}, {"config", initializer.get_config()}};
}

}  // namespace keel::keras
