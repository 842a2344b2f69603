#include "layer_run_script.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <initializer_list>
#include <string_view>

#include <keel/engine/error.hpp>
#include <keel/engine/npy.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>

#include "json_file.hpp"

namespace keel::cli {

bool LayerRunScript::uses_adjustment() const {
    return std::any_of(steps.begin(), steps.end(),
                       [](const LayerRunStep& step) { return step.adjustment.has_value(); });
}

namespace {

using nlohmann::json;

constexpr std::size_t kQuotedValueLimit = 80;

// A JSON value as it appears in an error message, shortened so a huge array cannot flood it.
std::string quote(const json& value) {
    std::string text = value.dump();
    if (text.size() > kQuotedValueLimit) {
        text.resize(kQuotedValueLimit);
        text += "...";
    }
    return text;
}

// Walks the script's JSON and turns every problem into a keel::Error that names the offending key
// by its path in the script ("steps[1].adjustment.scale").
class ScriptReader {
  public:
    explicit ScriptReader(std::filesystem::path path)
        : path_(std::move(path)), where_("layer-run script '" + path_.string() + "'") {}

    LayerRunScript read() {
        const json root = read_json_file(path_, "keel layer-run", "script");
        expect_type(root, json::value_t::object, "(top level)", "a JSON object");
        reject_unknown_keys(root, {"layer", "behavior", "input_dtype", "variables", "steps"}, "");

        LayerRunScript script;
        script.input_dtype = read_input_dtype(root);
        read_layer(root, script);
        merge_behavior(root, script.config);
        // Keras' dtype key sets the compute dtype when the config gives one; without it the layer
        // computes in the data's dtype, as Keras infers a missing dtype from the first input.
        if (!script.config.contains("dtype") || script.config["dtype"].is_null()) {
            script.config["dtype"] = std::string(dtype_name(script.input_dtype));
        }
        read_variables(root, script);
        read_steps(root, script);
        return script;
    }

  private:
    [[noreturn]] void fail(std::string_view argument, const json& value,
                           std::string_view expected) const {
        throw invalid_argument(where_, argument, quote(value), expected);
    }

    void expect_type(const json& value, json::value_t type, std::string_view argument,
                     std::string_view expected) const {
        if (value.type() != type) {
            fail(argument, value, expected);
        }
    }

    void reject_unknown_keys(const json& object, std::initializer_list<std::string_view> known,
                             const std::string& prefix) const {
        for (const auto& [key, value] : object.items()) {
            if (std::find(known.begin(), known.end(), key) == known.end()) {
                std::string expected = "a known key (unknown key; the keys here are";
                for (std::string_view name : known) {
                    expected.append(name == *known.begin() ? " " : ", ").append(name);
                }
                fail(prefix + key, value, expected + ")");
            }
        }
    }

    DType read_input_dtype(const json& root) const {
        if (!root.contains("input_dtype")) {
            return DType::f32;
        }
        const json& value = root["input_dtype"];
        if (value != "float32" && value != "bfloat16" && value != "float16") {
            fail("input_dtype", value, "\"float32\", \"bfloat16\" or \"float16\"");
        }
        return parse_dtype(value.get<std::string>(), "input_dtype");
    }

    void read_layer(const json& root, LayerRunScript& script) const {
        if (!root.contains("layer")) {
            fail("layer", nullptr, "an object {\"class_name\": ..., \"config\": {...}}");
        }
        const json& layer = root["layer"];
        expect_type(layer, json::value_t::object, "layer",
                    "an object {\"class_name\": ..., \"config\": {...}}");
        reject_unknown_keys(layer, {"class_name", "config"}, "layer.");
        const json class_name = layer.value("class_name", json());
        if (class_name != "BatchNormalization") {
            fail("layer.class_name", class_name,
                 "\"BatchNormalization\" (the layer class keel implements)");
        }
        script.class_name = class_name.get<std::string>();
        script.config = layer.value("config", json::object());
        expect_type(script.config, json::value_t::object, "layer.config",
                    "an object of Keras config keys");
    }

    void merge_behavior(const json& root, json& config) const {
        if (!root.contains("behavior")) {
            return;
        }
        const json& value = root["behavior"];
        expect_type(value, json::value_t::string, "behavior", "\"v2\", \"v1\" or \"tf_keras\"");
        const std::string behavior(behavior_name(parse_behavior(value.get<std::string>())));
        if (config.contains("behavior") && config["behavior"] != behavior) {
            fail("behavior", value,
                 "the same value as layer.config.behavior (" + config["behavior"].dump() +
                     ") when both are given");
        }
        config["behavior"] = behavior;
    }

    void read_variables(const json& root, LayerRunScript& script) const {
        if (!root.contains("variables")) {
            return;
        }
        const json& variables = root["variables"];
        expect_type(variables, json::value_t::object, "variables",
                    "an object {\"<variable name>\": \"<file>.npy\", ...}");
        for (const auto& [name, file] : variables.items()) {
            // Variables are float32 whatever the data's dtype.
            script.variables.emplace_back(name, load_npy(file, "variables." + name).to(DType::f32));
        }
    }

    void read_steps(const json& root, LayerRunScript& script) const {
        const json steps = root.value("steps", json());
        if (!steps.is_array() || steps.empty()) {
            fail("steps", steps, "a non-empty array of {\"input\": ..., \"training\": ...}");
        }
        for (std::size_t index = 0; index < steps.size(); ++index) {
            script.steps.push_back(read_step(steps[index], script.input_dtype,
                                             "steps[" + std::to_string(index) + "]"));
        }
    }

    LayerRunStep read_step(const json& step, DType input_dtype, const std::string& name) const {
        expect_type(step, json::value_t::object, name,
                    "an object {\"input\": ..., \"training\": ..., \"adjustment\": ...}");
        reject_unknown_keys(step, {"input", "training", "adjustment"}, name + ".");
        LayerRunStep result;
        // Rounds to nearest even when input_dtype is narrower than the file's dtype.
        result.input = load_npy(step.value("input", json()), name + ".input").to(input_dtype);
        const json training = step.value("training", json());
        if (training.is_boolean()) {
            result.training = training.get<bool>();
        } else if (!training.is_null()) {
            fail(name + ".training", training, "true, false or null");
        }
        if (step.contains("adjustment")) {
            const json& adjustment = step["adjustment"];
            const std::string argument = name + ".adjustment";
            expect_type(adjustment, json::value_t::object, argument,
                        "an object {\"scale\": \"<file>.npy\", \"bias\": \"<file>.npy\"}");
            reject_unknown_keys(adjustment, {"scale", "bias"}, argument + ".");
            result.adjustment.emplace(
                load_npy(adjustment.value("scale", json()), argument + ".scale").to(DType::f32),
                load_npy(adjustment.value("bias", json()), argument + ".bias").to(DType::f32));
        }
        return result;
    }

    Tensor load_npy(const json& file, const std::string& argument) const {
        if (!file.is_string() || file.get<std::string>().empty()) {
            fail(argument, file, "the name of a .npy file, relative to the script");
        }
        // read_npy's errors name the file and what is wrong with it.
        return read_npy(path_.parent_path() / file.get<std::string>());
    }

    std::filesystem::path path_;
    std::string where_;
};

}  // namespace

LayerRunScript load_layer_run_script(const std::filesystem::path& path) {
    return ScriptReader(path).read();
}

}  // namespace keel::cli
