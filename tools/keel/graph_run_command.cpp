#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/npy.hpp>
#include <keel/runtime/keras_model.hpp>

#include "commands.hpp"

namespace keel::cli {
namespace {

using json = nlohmann::ordered_json;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kTool = "keel graph-run";

void write_json(const fs::path& path, const json& value) {
    std::ofstream stream(path);
    stream << value.dump(2, ' ', false, json::error_handler_t::replace) << '\n';
    if (!stream) throw invalid_argument(kTool, "output file", path.string(), "a writable path");
}

int parse_count(const std::string& text, const char* option, int minimum) {
    int value = 0;
    const char* end = text.data() + text.size();
    const auto [rest, status] = std::from_chars(text.data(), end, value);
    if (status != std::errc() || rest != end || value < minimum) {
        throw invalid_argument(kTool, option, "'" + text + "'",
                               "an integer >= " + std::to_string(minimum));
    }
    return value;
}

bool bit_identical(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && a.dtype() == b.dtype() &&
           std::memcmp(a.data(), b.data(), a.byte_size()) == 0;
}

double milliseconds_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Serves `requests` inference runs from `threads` threads on one model; returns requests per
// second, or throws when a result differs from `expected` (a concurrency defect).
double serve(const Model& model, const std::vector<Tensor>& inputs,
             const std::vector<Tensor>& expected, int threads, int requests) {
    std::atomic<int> next{0};
    std::atomic<int> mismatches{0};
    std::vector<std::thread> workers;
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(threads));
    const Clock::time_point start = Clock::now();
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            try {
                while (next.fetch_add(1) < requests) {
                    const std::vector<Tensor> outputs = model.run(inputs);
                    for (std::size_t i = 0; i < outputs.size(); ++i) {
                        if (!bit_identical(outputs[i], expected[i])) ++mismatches;
                    }
                }
            } catch (...) {
                errors[static_cast<std::size_t>(t)] = std::current_exception();
            }
        });
    }
    for (std::thread& worker : workers) worker.join();
    const double seconds = milliseconds_since(start) / 1000.0;
    for (const std::exception_ptr& error : errors) {
        if (error) std::rethrow_exception(error);
    }
    if (mismatches.load() > 0) {
        throw std::runtime_error(std::to_string(mismatches.load()) +
                                 " output(s) of concurrent runs differ from the single-threaded "
                                 "result");
    }
    return requests / seconds;
}

json run_graph(const GraphRunArguments& arguments) {
    const int repeat = parse_count(arguments.repeat, "--repeat", 1);
    const int threads =
        arguments.threads.empty() ? 0 : parse_count(arguments.threads, "--threads", 1);
    const int requests =
        arguments.requests.empty() ? 0 : parse_count(arguments.requests, "--requests", 1);
    if ((threads == 0) != (requests == 0)) {
        throw invalid_argument(kTool, threads == 0 ? "--requests" : "--threads", "given alone",
                               "--threads and --requests together");
    }
    if (arguments.training && (requests > 0 || arguments.repeat_given)) {
        throw invalid_argument(kTool, "--training", "with --repeat or --requests",
                               "one training-mode run (timing repeats and serving are for "
                               "inference)");
    }

    ThreadingOptions threading = ThreadingOptions::from_environment();
    if (requests > 0) threading.preference = ThreadingOptions::Preference::throughput;
    const Engine engine(threading);
    const bool optimize = !arguments.no_optimize && !arguments.training;
    const Model model = load_keras_model(arguments.model, arguments.weights, engine,
                                         CompileOptions{.optimize = optimize});

    std::vector<Tensor> inputs;
    for (const fs::path& path : arguments.inputs) {
        Tensor input = read_npy(path);
        inputs.push_back(input.dtype() == DType::f32 ? input : input.to(DType::f32));
    }

    const RunOptions options{.training = arguments.training};
    Clock::time_point start = Clock::now();
    const std::vector<Tensor> outputs = model.run(inputs, options);
    std::vector<double> times = {milliseconds_since(start)};
    if (!arguments.training) {
        times.clear();  // the first run was the warm-up
        for (int r = 0; r < repeat; ++r) {
            start = Clock::now();
            model.run(inputs, options);
            times.push_back(milliseconds_since(start));
        }
    }
    std::sort(times.begin(), times.end());
    const double median = times.size() % 2 == 1
                              ? times[times.size() / 2]
                              : (times[times.size() / 2 - 1] + times[times.size() / 2]) / 2.0;

    json result;
    result["outputs"] = model.output_names();
    result["optimized"] = model.optimized();
    result["passes"] = model.passes();
    result["median_ms"] = median;
    for (std::size_t i = 0; i < outputs.size(); ++i) {
        write_npy(arguments.out_dir / (model.output_names()[i] + ".npy"),
                  outputs[i].dtype() == DType::f32 ? outputs[i] : outputs[i].to(DType::f32));
    }
    if (arguments.training) {
        for (const auto& layer : model.layers()) {
            if (layer->class_name() != "BatchNormalization") continue;
            const fs::path folder = arguments.out_dir / "variables" / layer->name();
            fs::create_directories(folder);
            for (const std::string& variable : layer->variable_names()) {
                if (variable.starts_with("moving_")) {
                    write_npy(folder / (variable + ".npy"), layer->variable(variable));
                }
            }
        }
    }
    if (requests > 0) result["requests_per_s"] = serve(model, inputs, outputs, threads, requests);
    return result;
}

int report_failure(const fs::path& result_path, std::string_view category, std::string_view message,
                   int status) {
    std::cerr << kTool << ": failed (" << category << "): " << message << '\n';
    try {
        write_json(result_path, {{"error", {{"category", category}, {"message", message}}}});
    } catch (const std::exception& failure) {
        std::cerr << kTool << ": cannot write " << result_path << ": " << failure.what() << '\n';
    }
    return status;
}

}  // namespace

int run_graph_run(const GraphRunArguments& arguments) {
    const fs::path result_path = arguments.out_dir / "result.json";
    std::error_code status;
    fs::create_directories(arguments.out_dir, status);
    if (status) {
        std::cerr << kTool << ": cannot create the output directory " << arguments.out_dir << ": "
                  << status.message() << '\n';
        return kGraphRunFailed;
    }
    fs::remove(result_path, status);
    try {
        const json result = run_graph(arguments);
        write_json(result_path, result);
        std::cerr << kTool << ": wrote " << result_path.string() << '\n';
        return 0;
    } catch (const Error& error) {
        return report_failure(result_path, category_name(error.category()), error.what(),
                              kGraphRunFailed);
    } catch (const std::runtime_error& error) {
        return report_failure(result_path, "concurrency", error.what(), kGraphRunMismatch);
    } catch (const std::exception& error) {
        return report_failure(result_path, "internal", error.what(), kGraphRunFailed);
    }
}

}  // namespace keel::cli
