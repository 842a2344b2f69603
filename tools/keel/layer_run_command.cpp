#include <cstddef>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/npy.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>

#include "commands.hpp"
#include "layer_run_script.hpp"

namespace keel::cli {
namespace {

// Keys stay in the order written, so result.json reads top-down (index first, and so on).
using json = nlohmann::ordered_json;
namespace fs = std::filesystem;

// Where a run is, so that a failure is reported at the stage TensorFlow would raise it.
enum class Stage { script, construction, build, call };

std::string_view stage_name(Stage stage) {
    switch (stage) {
        case Stage::script:
            return "script";
        case Stage::construction:
            return "construction";
        case Stage::build:
            return "build";
        case Stage::call:
            return "call";
    }
    return "internal";
}

struct Progress {
    Stage stage = Stage::script;
    std::optional<std::size_t> step;
};

// The adjustment callable has no call argument saying which step runs, so the runner tells it
// through this shared cursor before every call.
struct AdjustmentFeed {
    const std::vector<LayerRunStep>* steps = nullptr;
    std::size_t current = 0;
};

BatchNormalizationAdjustment make_adjustment(std::shared_ptr<const AdjustmentFeed> feed) {
    return [feed](const Shape&) -> std::pair<Tensor, Tensor> {
        const LayerRunStep& step = (*feed->steps)[feed->current];
        if (!step.adjustment) {
            throw invalid_argument("keel layer-run",
                                   "steps[" + std::to_string(feed->current) + "].adjustment",
                                   "absent",
                                   "scale and bias arrays on every training step once any step "
                                   "has them (the layer was constructed with an adjustment)");
        }
        return *step.adjustment;
    };
}

std::unique_ptr<BatchNormalization> construct_layer(const LayerRunScript& script,
                                                    std::shared_ptr<const AdjustmentFeed> feed) {
    std::unique_ptr<BatchNormalization> layer = BatchNormalization::from_config(script.config);
    if (!script.uses_adjustment()) {
        return layer;
    }
    // A Keras config cannot hold a callable: the layer is constructed again from the options the
    // config produced plus the adjustment, so the construction-time checks on adjustment apply.
    BatchNormalizationOptions options = layer->options();
    options.adjustment = make_adjustment(std::move(feed));
    return std::make_unique<BatchNormalization>(std::move(options));
}

void write_json(const fs::path& path, const json& value) {
    std::ofstream stream(path, std::ios::binary | std::ios::trunc);
    // Messages may quote file names that are not UTF-8; those bytes are replaced, not fatal.
    stream << value.dump(2, ' ', false, json::error_handler_t::replace) << '\n';
    stream.close();
    if (!stream) {
        throw invalid_argument("keel layer-run", "output file", "'" + path.string() + "'",
                               "a writable path");
    }
}

json optional_to_json(const std::optional<bool>& value) {
    return value ? json(*value) : json(nullptr);
}

void write_step_files(const fs::path& out_dir, std::size_t index, const Tensor& output,
                      const Layer& layer) {
    const std::string prefix = "step" + std::to_string(index) + "_";
    write_npy(out_dir / (prefix + "y.npy"), output);
    for (const std::string& name : layer.variable_names()) {
        write_npy(out_dir / (prefix + name + ".npy"), layer.variable(name));
    }
}

// Runs the script and returns the success report; throws on any failure, with `progress` saying
// where it happened.
json run_script(const LayerRunArguments& arguments, Progress& progress) {
    progress.stage = Stage::script;
    const LayerRunScript script = load_layer_run_script(arguments.script);

    progress.stage = Stage::construction;
    auto feed = std::make_shared<AdjustmentFeed>();
    feed->steps = &script.steps;
    const std::unique_ptr<BatchNormalization> layer = construct_layer(script, feed);

    // TF's build-time checks run against the first call's input shape; the script's variables
    // replace what the initializers produced.
    progress.stage = Stage::build;
    layer->build(script.steps.front().input.shape());
    for (const auto& [name, value] : script.variables) {
        layer->set_variable(name, value);
    }

    progress.stage = Stage::call;
    json steps = json::array();
    for (std::size_t index = 0; index < script.steps.size(); ++index) {
        progress.step = index;
        feed->current = index;
        const LayerRunStep& step = script.steps[index];
        const Tensor output = layer->call(step.input, CallOptions{.training = step.training});
        write_step_files(arguments.out_dir, index, output, *layer);
        const BatchNormalizationCallReport& report = layer->last_call_report();
        steps.push_back({
            {"index", index},
            {"training", optional_to_json(step.training)},
            {"effective_training", report.training},
            {"path", report.path},
            {"implementation", report.implementation},
            {"fused_semantics", report.fused_semantics},
            {"output_shape", output.shape()},
            {"output_dtype", dtype_name(output.dtype())},
        });
    }
    return {
        {"layer", {{"class_name", layer->class_name()}, {"config", layer->get_config()}}},
        {"input_dtype", dtype_name(script.input_dtype)},
        {"variables", layer->variable_names()},
        {"steps", std::move(steps)},
    };
}

int report_failure(const fs::path& result_path, const Progress& progress, std::string_view category,
                   std::string_view message) {
    json error = {
        {"category", category},
        {"message", message},
        {"stage", stage_name(progress.stage)},
    };
    if (progress.stage == Stage::call && progress.step) {
        error["step"] = *progress.step;
    }
    std::cerr << "keel layer-run: " << stage_name(progress.stage) << " failed (" << category
              << "): " << message << '\n';
    try {
        write_json(result_path, {{"error", std::move(error)}});
    } catch (const std::exception& failure) {
        std::cerr << "keel layer-run: cannot write " << result_path << ": " << failure.what()
                  << '\n';
    }
    return kLayerRunFailed;
}

}  // namespace

int run_layer_run(const LayerRunArguments& arguments) {
    const fs::path result_path = arguments.out_dir / "result.json";
    std::error_code status;
    fs::create_directories(arguments.out_dir, status);
    if (status) {
        std::cerr << "keel layer-run: cannot create the output directory " << arguments.out_dir
                  << ": " << status.message() << '\n';
        return kLayerRunFailed;
    }
    // A result left by an earlier run must never pass for this run's.
    fs::remove(result_path, status);

    Progress progress;
    try {
        const json result = run_script(arguments, progress);
        write_json(result_path, result);
        std::cerr << "keel layer-run: " << result["steps"].size() << " step(s) run; wrote "
                  << result_path.string() << '\n';
        return 0;
    } catch (const Error& error) {
        return report_failure(result_path, progress, category_name(error.category()), error.what());
    } catch (const std::exception& error) {
        return report_failure(result_path, progress, "internal", error.what());
    } catch (...) {
        return report_failure(result_path, progress, "internal", "unknown exception");
    }
}

}  // namespace keel::cli
