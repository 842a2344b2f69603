#include "layers/activation/activation_function.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <keel/engine/error.hpp>

#include "engine/threading.hpp"

namespace keel::activation {
namespace {

using Kind = ActivationFunction::Kind;

// Elementwise work below this many elements runs inline on the calling thread: splitting it
// costs more than the loop (a few microseconds of scheduling against ~1 ns per element).
constexpr std::int64_t kElementGrain = 16384;

struct KnownName {
    std::string_view name;
    Kind kind;
};

// The activation names Keras (tf_keras 2.x and Keras 3) resolves that keel computes.
constexpr std::array<KnownName, 12> kKnownNames{{
    {"linear", Kind::linear},
    {"relu", Kind::relu},
    {"relu6", Kind::relu},
    {"sigmoid", Kind::sigmoid},
    {"tanh", Kind::tanh},
    {"gelu", Kind::gelu},
    {"swish", Kind::swish},
    {"silu", Kind::swish},
    {"softmax", Kind::softmax},
    {"elu", Kind::elu},
    {"softplus", Kind::softplus},
    {"exponential", Kind::exponential},
}};

// Keras activations keel recognizes but does not compute: an honest `unsupported`, not a typo.
constexpr std::array<std::string_view, 19> kKerasOnlyNames{
    "selu",        "softsign",    "hard_sigmoid", "hard_silu",   "hard_swish",
    "mish",        "log_softmax", "leaky_relu",   "celu",        "glu",
    "log_sigmoid", "sparse_plus", "squareplus",   "tanh_shrink", "hard_tanh",
    "soft_shrink", "hard_shrink", "threshold",    "sparsemax"};

std::string describe_json(const nlohmann::json& value) {
    constexpr std::size_t kMaxLength = 80;
    std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() > kMaxLength) text = text.substr(0, kMaxLength - 3) + "...";
    return text;
}

std::string format_number(double value) {
    std::ostringstream text;
    text.precision(17);
    text << value;
    return text.str();
}

ActivationFunction from_name(const std::string& name, std::string_view where,
                             std::string_view argument) {
    for (const KnownName& known : kKnownNames) {
        if (known.name != name) continue;
        ActivationFunction function;
        function.kind = known.kind;
        if (name == "relu6") function.max_value = 6.0;
        return function;
    }
    if (std::find(kKerasOnlyNames.begin(), kKerasOnlyNames.end(), name) != kKerasOnlyNames.end()) {
        throw unsupported(where, std::string(argument) + " = \"" + name + "\"",
                          "keel does not implement this Keras activation");
    }
    std::string expected = "null or one of";
    for (const KnownName& known : kKnownNames) {
        expected +=
            (&known == kKnownNames.data() ? " \"" : ", \"") + std::string(known.name) + "\"";
    }
    throw invalid_argument(where, argument, "\"" + name + "\"", expected);
}

// Applies `function(value)` to every element, in parallel chunks on the engine's threads. The
// bodies are plain loops over contiguous floats so the compiler can vectorize those it can.
template <typename Function>
void for_each_element(const Engine& engine, const float* input, float* output, std::int64_t count,
                      Function function) {
    parallel_for(engine, count, kElementGrain, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) output[i] = function(input[i]);
    });
}

// Numerically stable softmax over the middle axis of a [outer, length, inner] view: exp(x − max)
// never overflows and the largest term is exactly 1, so the sum is at least 1 and never
// underflows to 0. The sum accumulates in double; each output is one f32 division, as TF's
// exp / sum.
void softmax(const Engine& engine, float* data, std::int64_t outer, std::int64_t length,
             std::int64_t inner) {
    if (length == 0) return;
    const std::int64_t grain = std::max<std::int64_t>(1, kElementGrain / (length * inner));
    if (inner == 1) {
        parallel_for(engine, outer, grain, [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t row = begin; row < end; ++row) {
                float* values = data + row * length;
                float maximum = values[0];
                for (std::int64_t i = 1; i < length; ++i) maximum = std::max(maximum, values[i]);
                double sum = 0.0;
                for (std::int64_t i = 0; i < length; ++i) {
                    values[i] = std::exp(values[i] - maximum);
                    sum += values[i];
                }
                const auto total = static_cast<float>(sum);
                for (std::int64_t i = 0; i < length; ++i) values[i] /= total;
            }
        });
        return;
    }
    // Strided axis: walk it as `length` rows of `inner` contiguous values, so every inner loop is
    // over contiguous memory.
    parallel_for(engine, outer, grain, [&](std::int64_t begin, std::int64_t end) {
        std::vector<float> maximum(static_cast<std::size_t>(inner));
        std::vector<double> sum(static_cast<std::size_t>(inner));
        for (std::int64_t block = begin; block < end; ++block) {
            float* base = data + block * length * inner;
            std::copy(base, base + inner, maximum.begin());
            for (std::int64_t i = 1; i < length; ++i) {
                const float* row = base + i * inner;
                for (std::int64_t j = 0; j < inner; ++j) {
                    maximum[j] = std::max(maximum[j], row[j]);
                }
            }
            std::fill(sum.begin(), sum.end(), 0.0);
            for (std::int64_t i = 0; i < length; ++i) {
                float* row = base + i * inner;
                for (std::int64_t j = 0; j < inner; ++j) {
                    row[j] = std::exp(row[j] - maximum[j]);
                    sum[j] += row[j];
                }
            }
            for (std::int64_t j = 0; j < inner; ++j) maximum[j] = static_cast<float>(sum[j]);
            for (std::int64_t i = 0; i < length; ++i) {
                float* row = base + i * inner;
                for (std::int64_t j = 0; j < inner; ++j) row[j] /= maximum[j];
            }
        }
    });
}

}  // namespace

ActivationFunction ActivationFunction::from_keras(const nlohmann::json& identifier,
                                                  std::string_view where,
                                                  std::string_view argument) {
    if (identifier.is_null()) return ActivationFunction{};
    if (identifier.is_string()) return from_name(identifier.get<std::string>(), where, argument);
    // Keras 3 and tf_keras' serialization_lib write a built-in activation as
    // {"module": "keras.activations", "class_name": "function", "config": "relu",
    //  "registered_name": "relu"}; the function's name is the whole identity.
    const std::string expected =
        "null, an activation name or {\"class_name\": \"function\", \"config\": <name>}";
    if (!identifier.is_object()) {
        throw invalid_argument(where, argument, describe_json(identifier), expected);
    }
    for (const auto& [key, value] : identifier.items()) {
        if (key != "class_name" && key != "config" && key != "module" && key != "registered_name") {
            throw invalid_argument(where, std::string(argument) + "." + key, describe_json(value),
                                   "no such key; " + expected);
        }
    }
    const auto class_name = identifier.find("class_name");
    const auto config = identifier.find("config");
    if (class_name == identifier.end() || *class_name != "function" || config == identifier.end() ||
        !config->is_string()) {
        throw invalid_argument(where, argument, describe_json(identifier), expected);
    }
    return from_name(config->get<std::string>(), where, argument);
}

nlohmann::json ActivationFunction::to_keras() const {
    const auto no_identifier = [&](const std::string& what) -> nlohmann::json {
        throw unsupported("activation " + what, "a Keras identifier",
                          "Keras has no activation name for these parameters (only a layer, "
                          "e.g. ReLU, carries them)");
    };
    switch (kind) {
        case Kind::linear:
            return "linear";
        case Kind::relu:
            if (negative_slope == 0.0 && threshold == 0.0) {
                if (std::isinf(max_value) && max_value > 0) return "relu";
                if (max_value == 6.0) return "relu6";
            }
            return no_identifier("relu(negative_slope = " + format_number(negative_slope) +
                                 ", max_value = " + format_number(max_value) +
                                 ", threshold = " + format_number(threshold) + ")");
        case Kind::sigmoid:
            return "sigmoid";
        case Kind::tanh:
            return "tanh";
        case Kind::gelu:
            if (!approximate) return "gelu";
            return no_identifier("gelu(approximate = true)");
        case Kind::swish:
            // Both tf_keras and Keras 3 resolve "swish" (Keras 3's "silu" is the same function).
            return "swish";
        case Kind::softmax:
            if (axis == -1) return "softmax";
            return no_identifier("softmax(axis = " + std::to_string(axis) + ")");
        case Kind::elu:
            if (alpha == 1.0) return "elu";
            return no_identifier("elu(alpha = " + format_number(alpha) + ")");
        case Kind::softplus:
            return "softplus";
        case Kind::exponential:
            return "exponential";
    }
    throw internal_error("ActivationFunction::to_keras", "unknown activation kind");
}

bool ActivationFunction::append_post_op(dnnl::post_ops& post_ops) const {
    // oneDNN's eltwise formulas (v2.6 dnnl_types.h), matched against Keras' term by term:
    //   relu      s > 0 ? s : α·s              = Keras relu / leaky_relu when threshold == 0
    //                                            and there is no max_value
    //   clip_v2   s <= α ? α : s >= β ? β : s  = Keras clip(relu(x), 0, max_value) (relu6) with
    //                                            α = 0, β = max_value, no slope, no threshold
    //   logistic  1 / (1 + e^−s); tanh; gelu_erf 0.5·s·(1 + erf(s/√2)); gelu_tanh
    //             0.5·s·(1 + tanh(√(2/π)·(s + 0.044715·s³))); swish s / (1 + e^−α·s) with α = 1;
    //   elu       s > 0 ? s : α·(e^s − 1);  soft_relu log(1 + e^s) (α ignored in 2.6); exp e^s
    // Softmax is not elementwise; relu with a threshold, or a slope together with max_value, has
    // no single eltwise equivalent.
    const auto append = [&](dnnl::algorithm algorithm, double alpha_value, double beta_value) {
        post_ops.append_eltwise(1.0f, algorithm, static_cast<float>(alpha_value),
                                static_cast<float>(beta_value));
        return true;
    };
    switch (kind) {
        case Kind::linear:
            return true;  // the identity: nothing to append, the result is already exact
        case Kind::relu:
            if (threshold != 0.0) return false;
            if (std::isinf(max_value) && max_value > 0) {
                return append(dnnl::algorithm::eltwise_relu, negative_slope, 0.0);
            }
            if (negative_slope == 0.0 && max_value >= 0.0 && std::isfinite(max_value)) {
                return append(dnnl::algorithm::eltwise_clip_v2, 0.0, max_value);
            }
            return false;
        case Kind::sigmoid:
            return append(dnnl::algorithm::eltwise_logistic, 0.0, 0.0);
        case Kind::tanh:
            return append(dnnl::algorithm::eltwise_tanh, 0.0, 0.0);
        case Kind::gelu:
            return append(approximate ? dnnl::algorithm::eltwise_gelu_tanh
                                      : dnnl::algorithm::eltwise_gelu_erf,
                          0.0, 0.0);
        case Kind::swish:
            return append(dnnl::algorithm::eltwise_swish, 1.0, 0.0);
        case Kind::elu:
            return append(dnnl::algorithm::eltwise_elu, alpha, 0.0);
        case Kind::softplus:
            return append(dnnl::algorithm::eltwise_soft_relu, 0.0, 0.0);
        case Kind::exponential:
            return append(dnnl::algorithm::eltwise_exp, 0.0, 0.0);
        case Kind::softmax:
            return false;
    }
    return false;
}

void ActivationFunction::apply_in_place(const Engine& engine, Tensor& values) const {
    apply(engine, values, values);
}

void ActivationFunction::apply(const Engine& engine, const Tensor& input, Tensor& output) const {
    constexpr std::string_view kWhere = "ActivationFunction::apply";
    if (input.dtype() != DType::f32 || output.dtype() != DType::f32) {
        throw invalid_argument(kWhere, "dtype",
                               std::string(dtype_name(input.dtype())) + " -> " +
                                   std::string(dtype_name(output.dtype())),
                               "float32 -> float32");
    }
    if (input.shape() != output.shape()) {
        throw shape_mismatch(kWhere, "output shape", shape_to_string(output.shape()),
                             shape_to_string(input.shape()));
    }
    const Tensor& values = input;
    const float* in = input.data_as<float>();
    float* data = output.data_as<float>();
    const std::int64_t count = input.element_count();
    switch (kind) {
        case Kind::linear:
            if (data != in) std::copy(in, in + count, data);
            return;
        case Kind::relu: {
            // Keras' arithmetic: x·(x > t) clipped to [0, max_value], minus slope·relu(t − x).
            // For t >= 0 that is the select below, with the same roundings.
            const auto t = static_cast<float>(threshold);
            const auto top = static_cast<float>(max_value);
            const auto slope = static_cast<float>(negative_slope);
            // Adding +0 turns the −0 that 0·(t − x) gives for slope 0 into tf.nn.relu's +0. Both
            // sides are computed and one selected, so the loop vectorizes without branches (a
            // branch on the sign of activations mispredicts half the time).
            for_each_element(engine, in, data, count, [=](float x) {
                const float above = std::min(x, top);
                const float below = -(slope * (t - x)) + 0.0f;
                return x > t ? above : below;
            });
            return;
        }
        case Kind::sigmoid:
            for_each_element(engine, in, data, count,
                             [](float x) { return 1.0f / (1.0f + std::exp(-x)); });
            return;
        case Kind::tanh:
            for_each_element(engine, in, data, count, [](float x) { return std::tanh(x); });
            return;
        case Kind::gelu:
            if (approximate) {
                // Keras: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
                const auto scale = static_cast<float>(std::sqrt(2.0 / M_PI));
                for_each_element(engine, in, data, count, [=](float x) {
                    return 0.5f * x * (1.0f + std::tanh(scale * (x + 0.044715f * x * x * x)));
                });
            } else {
                // Keras: 0.5·x·(1 + erf(x / √2)).
                const auto root_two = static_cast<float>(M_SQRT2);
                for_each_element(engine, in, data, count, [=](float x) {
                    return 0.5f * x * (1.0f + std::erf(x / root_two));
                });
            }
            return;
        case Kind::swish:
            for_each_element(engine, in, data, count,
                             [](float x) { return x / (1.0f + std::exp(-x)); });
            return;
        case Kind::elu: {
            const auto scale = static_cast<float>(alpha);
            for_each_element(engine, in, data, count,
                             [=](float x) { return x > 0.0f ? x : scale * std::expm1(x); });
            return;
        }
        case Kind::softplus:
            // log(1 + e^x) without overflow: max(x, 0) + log1p(e^−|x|).
            for_each_element(engine, in, data, count, [](float x) {
                return std::max(x, 0.0f) + std::log1p(std::exp(-std::abs(x)));
            });
            return;
        case Kind::exponential:
            for_each_element(engine, in, data, count, [](float x) { return std::exp(x); });
            return;
        case Kind::softmax: {
            const int rank = values.rank();
            if (rank == 0) {
                throw invalid_argument(kWhere, "values shape", "[] (a scalar)",
                                       "a tensor of rank >= 1 for softmax");
            }
            if (axis < -rank || axis >= rank) {
                throw invalid_argument(kWhere, "axis", std::to_string(axis),
                                       "an axis in [-" + std::to_string(rank) + ", " +
                                           std::to_string(rank) + ") for shape " +
                                           shape_to_string(values.shape()));
            }
            const int resolved = axis < 0 ? axis + rank : axis;
            const Shape& shape = values.shape();
            std::int64_t outer = 1;
            std::int64_t inner = 1;
            for (int i = 0; i < resolved; ++i) outer *= shape[static_cast<std::size_t>(i)];
            for (int i = resolved + 1; i < rank; ++i) inner *= shape[static_cast<std::size_t>(i)];
            if (count == 0) return;
            if (data != in) std::copy(in, in + count, data);
            softmax(engine, data, outer, shape[static_cast<std::size_t>(resolved)], inner);
            return;
        }
    }
}

}  // namespace keel::activation
