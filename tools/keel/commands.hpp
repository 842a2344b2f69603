#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

// The subcommands of the `keel` tool. main.cpp only parses the command line; each command lives in
// its own file and returns the process exit status.
namespace keel::cli {

// `keel info`: keel's version and the engine's description (oneDNN, ISA, threads, build type).
int run_info();

// `keel layer-run SCRIPT.json --out DIR`: the conformance runner (README, "keel layer-run").
struct LayerRunArguments {
    std::filesystem::path script;
    std::filesystem::path out_dir;
};
// Exit status of a run that failed; result.json then holds {"error": {...}}.
inline constexpr int kLayerRunFailed = 2;
int run_layer_run(const LayerRunArguments& arguments);

// `keel demo`: a BatchNormalization layer on a random NHWC tensor, timed call by call.
struct DemoArguments {
    std::int64_t batch = 32;
    std::int64_t height = 56;
    std::int64_t width = 56;
    std::int64_t channels = 64;
    int training_calls = 3;
    int inference_calls = 3;
    std::uint64_t seed = 42;
};
int run_demo(const DemoArguments& arguments);

// `keel bench --config FILE --shape 32,56,56,64 ...`: times one BatchNormalization configuration
// and prints one JSON object as the last line of stdout (README, "keel bench"). Every value stays
// text until run_bench validates it, so that every bad argument exits with kBenchFailed.
struct BenchArguments {
    std::filesystem::path config;
    std::string shape;
    std::string training = "0";
    // Empty = the config's dtype (float32 when it has none).
    std::string dtype;
    std::string repeat = "20";
    // Empty = KEEL_NUM_THREADS, else every core.
    std::string threads;
};
inline constexpr int kBenchFailed = 2;
int run_bench(const BenchArguments& arguments);

// `keel graph-run MODEL.json --weights DIR --input x.npy --out DIR ...`: runs a Keras functional
// model (README, "keel graph-run"). Numbers stay text until run_graph_run validates them.
struct GraphRunArguments {
    std::filesystem::path model;
    std::filesystem::path weights;
    std::vector<std::filesystem::path> inputs;
    std::filesystem::path out_dir;
    bool training = false;
    bool no_optimize = false;
    std::string repeat = "20";
    bool repeat_given = false;
    std::string threads;
    std::string requests;
};
inline constexpr int kGraphRunFailed = 2;
// Concurrent results differed from the single-threaded one.
inline constexpr int kGraphRunMismatch = 1;
int run_graph_run(const GraphRunArguments& arguments);

}  // namespace keel::cli
