#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/dtype.hpp>
#include <keel/engine/engine.hpp>
#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>

#include "commands.hpp"
#include "json_file.hpp"

namespace keel::cli {
namespace {

using json = nlohmann::ordered_json;

constexpr std::string_view kWhere = "keel bench";

// The input's values do not change the work a batch normalization does; a fixed seed only makes
// runs reproducible to the bit.
constexpr std::uint64_t kInputSeed = 42;

// The first call builds the variables and creates (and caches) the primitive or kernel plan; the
// second runs the steady state once, so the thread team is awake and the pages are mapped before
// timing starts.
constexpr int kWarmUpCalls = 2;

std::optional<std::int64_t> parse_integer(std::string_view text) {
    std::int64_t value = 0;
    const char* end = text.data() + text.size();
    const auto [stop, status] = std::from_chars(text.data(), end, value);
    if (text.empty() || status != std::errc() || stop != end) {
        return std::nullopt;
    }
    return value;
}

int parse_count(const std::string& text, std::string_view argument) {
    const std::optional<std::int64_t> value = parse_integer(text);
    if (!value || *value < 1 || *value > std::numeric_limits<int>::max()) {
        throw invalid_argument(kWhere, argument, "'" + text + "'", "a positive integer");
    }
    return static_cast<int>(*value);
}

bool parse_training(const std::string& text) {
    if (text != "0" && text != "1") {
        throw invalid_argument(kWhere, "--training", "'" + text + "'", "0 or 1");
    }
    return text == "1";
}

Shape parse_shape(const std::string& text) {
    const auto malformed = [&] {
        return invalid_argument(kWhere, "--shape", "'" + text + "'",
                                "1 to " + std::to_string(kMaxRank) +
                                    " comma-separated non-negative integers, e.g. 32,56,56,64");
    };
    Shape shape;
    std::size_t start = 0;
    while (true) {
        const std::size_t comma = text.find(',', start);
        const std::string_view field = std::string_view(text).substr(
            start, comma == std::string::npos ? std::string::npos : comma - start);
        const std::optional<std::int64_t> dimension = parse_integer(field);
        if (!dimension || *dimension < 0 || shape.size() == static_cast<std::size_t>(kMaxRank)) {
            throw malformed();
        }
        shape.push_back(*dimension);
        if (comma == std::string::npos) {
            break;
        }
        start = comma + 1;
    }
    // Rejects element counts that overflow.
    element_count(shape, kWhere);
    return shape;
}

// The layer's config from FILE: {"class_name": "BatchNormalization", "config": {...}} or the bare
// config object (which, being a config, never has a "class_name" key).
nlohmann::json load_layer_config(const std::filesystem::path& path) {
    const nlohmann::json root = read_json_file(path, kWhere, "--config");
    const std::string where = std::string(kWhere) + " config '" + path.string() + "'";
    if (!root.is_object()) {
        throw invalid_argument(where, "(top level)", root.dump().substr(0, 80), "a JSON object");
    }
    if (!root.contains("class_name")) {
        return root;
    }
    for (const auto& [key, value] : root.items()) {
        if (key != "class_name" && key != "config") {
            throw invalid_argument(where, key, value.dump().substr(0, 80),
                                   "no other key beside class_name and config");
        }
    }
    const nlohmann::json& class_name = root["class_name"];
    if (class_name != "BatchNormalization") {
        throw unsupported(where, "class_name = " + class_name.dump().substr(0, 80),
                          "keel bench times BatchNormalization only");
    }
    if (!root.contains("config") || !root["config"].is_object()) {
        throw invalid_argument(
            where, "config",
            root.contains("config") ? root["config"].dump().substr(0, 80) : "absent",
            "a JSON object");
    }
    return root["config"];
}

bool has_dtype(const nlohmann::json& config) {
    return config.contains("dtype") && !config["dtype"].is_null();
}

// --dtype sets the compute dtype when the config has none; a config that names another one is a
// contradiction, not something to override silently.
std::unique_ptr<BatchNormalization> construct_layer(nlohmann::json config,
                                                    const std::optional<DType> requested,
                                                    const Engine& engine) {
    const bool config_has_dtype = has_dtype(config);
    if (requested && !config_has_dtype) {
        config["dtype"] = std::string(dtype_name(*requested));
    }
    std::unique_ptr<BatchNormalization> layer = BatchNormalization::from_config(config, engine);
    if (requested && config_has_dtype && layer->compute_dtype() != *requested) {
        throw invalid_argument(
            kWhere, "--dtype", std::string(dtype_name(*requested)),
            "the config's dtype " + config["dtype"].dump().substr(0, 80) + " (or no --dtype)");
    }
    return layer;
}

std::optional<DType> parse_requested_dtype(const std::string& text) {
    if (text.empty()) {
        return std::nullopt;
    }
    const DType dtype = parse_dtype(text, "--dtype");
    if (dtype == DType::f64) {
        throw invalid_argument(kWhere, "--dtype", "'" + text + "'",
                               "f32, bf16, f16, float32, bfloat16 or float16");
    }
    return dtype;
}

Tensor random_input(const Shape& shape, DType dtype) {
    std::mt19937_64 generator(kInputSeed);
    std::normal_distribution<float> distribution(0.0f, 1.0f);
    std::vector<float> values(static_cast<std::size_t>(element_count(shape)));
    std::generate(values.begin(), values.end(), [&] { return distribution(generator); });
    return Tensor::from_floats(shape, values, dtype);
}

double median_of(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t middle = values.size() / 2;
    return values.size() % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2.0;
}

json bench(const BenchArguments& arguments) {
    if (arguments.config.empty()) {
        throw invalid_argument(kWhere, "--config", "absent", "a JSON file");
    }
    if (arguments.shape.empty()) {
        throw invalid_argument(kWhere, "--shape", "absent", "e.g. 32,56,56,64");
    }
    const Shape shape = parse_shape(arguments.shape);
    const bool training = parse_training(arguments.training);
    const int repeat = parse_count(arguments.repeat, "--repeat");
    const std::optional<DType> requested_dtype = parse_requested_dtype(arguments.dtype);
    const std::optional<int> threads =
        arguments.threads.empty() ? std::nullopt
                                  : std::optional<int>(parse_count(arguments.threads, "--threads"));
    const nlohmann::json config = load_layer_config(arguments.config);

    const Engine engine =
        threads ? Engine(ThreadingOptions{.intra_op_threads = *threads}) : default_engine();
    const std::unique_ptr<BatchNormalization> layer =
        construct_layer(config, requested_dtype, engine);
    const Tensor input = random_input(shape, layer->compute_dtype());
    const CallOptions call_options{.training = training};

    std::cerr << "keel bench: BatchNormalization on " << shape_to_string(shape) << ' '
              << dtype_name(input.dtype()) << ", " << (training ? "training" : "inference") << ", "
              << engine.intra_op_threads() << " thread(s), " << kWarmUpCalls
              << " warm-up call(s) then " << repeat << " timed\n";
    for (int call = 0; call < kWarmUpCalls; ++call) {
        layer->call(input, call_options);
    }
    std::vector<double> milliseconds;
    milliseconds.reserve(static_cast<std::size_t>(repeat));
    for (int call = 0; call < repeat; ++call) {
        const auto start = std::chrono::steady_clock::now();
        // Freed after the clock stops: releasing the output is not part of the call.
        const Tensor output = layer->call(input, call_options);
        const std::chrono::duration<double, std::milli> elapsed =
            std::chrono::steady_clock::now() - start;
        milliseconds.push_back(elapsed.count());
    }

    // A V2 layer with trainable=false runs training calls in inference mode: the traffic follows
    // the mode that actually ran. Minimal traffic: inference reads x and writes y; training also
    // reads x once more for the batch statistics.
    const BatchNormalizationCallReport& report = layer->last_call_report();
    const std::size_t passes = report.training ? 3 : 2;
    const std::size_t bytes = passes * input.byte_size();
    const double median_ms = median_of(milliseconds);
    const double min_ms = *std::min_element(milliseconds.begin(), milliseconds.end());
    const double max_ms = *std::max_element(milliseconds.begin(), milliseconds.end());
    const double gbps = static_cast<double>(bytes) / (median_ms * 1e-3) / 1e9;
    return {
        {"class_name", layer->class_name()},
        {"shape", shape},
        {"dtype", dtype_name(input.dtype())},
        {"training", training},
        {"effective_training", report.training},
        {"threads", engine.intra_op_threads()},
        {"repeat", repeat},
        {"median_ms", median_ms},
        {"min_ms", min_ms},
        {"max_ms", max_ms},
        {"bytes", bytes},
        {"gbps", gbps},
        {"path", report.path},
        {"implementation", report.implementation},
        {"fused_semantics", report.fused_semantics},
    };
}

}  // namespace

int run_bench(const BenchArguments& arguments) {
    try {
        const json result = bench(arguments);
        // File names in messages may not be UTF-8; such bytes are replaced rather than fatal.
        std::cout << result.dump(-1, ' ', false, json::error_handler_t::replace) << std::endl;
        return 0;
    } catch (const Error& error) {
        std::cerr << "keel bench: error (" << category_name(error.category())
                  << "): " << error.what() << '\n';
    } catch (const std::exception& error) {
        std::cerr << "keel bench: internal error: " << error.what() << '\n';
    }
    return kBenchFailed;
}

}  // namespace keel::cli
