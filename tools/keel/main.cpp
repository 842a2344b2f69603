#include <exception>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include <keel/engine/error.hpp>
#include <keel/version.hpp>

#include "commands.hpp"

namespace {

// Runs one subcommand so that no exception ever escapes main: the tool reports and exits with 1
// instead of terminating (layer-run and bench catch everything themselves and exit with 2).
template <typename Command>
int guarded(Command&& command) {
    try {
        return command();
    } catch (const keel::Error& error) {
        std::cerr << "keel: error (" << keel::category_name(error.category())
                  << "): " << error.what() << '\n';
    } catch (const std::exception& error) {
        std::cerr << "keel: internal error: " << error.what() << '\n';
    } catch (...) {
        std::cerr << "keel: internal error: unknown exception\n";
    }
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"keel: a CPU inference engine component on oneDNN", "keel"};
    app.set_version_flag("--version", "keel " + std::string(keel::version()));
    app.require_subcommand(1);
    app.footer("Logs go to stderr; KEEL_LOG_LEVEL (trace ... off) and KEEL_NUM_THREADS apply.");

    CLI::App* info = app.add_subcommand(
        "info", "Print keel's version, oneDNN's version, the ISA it detected, threads, build type");

    keel::cli::LayerRunArguments layer_run_arguments;
    CLI::App* layer_run = app.add_subcommand(
        "layer-run",
        "Run one layer through the calls a SCRIPT.json describes and write every output and "
        "variable as .npy, with DIR/result.json (exit status 2 and an \"error\" object on "
        "failure)");
    layer_run->add_option("script", layer_run_arguments.script, "The script (JSON)")->required();
    layer_run->add_option("--out", layer_run_arguments.out_dir, "Output directory (created)")
        ->required();

    keel::cli::DemoArguments demo_arguments;
    CLI::App* demo = app.add_subcommand(
        "demo", "Time a BatchNormalization layer on a random NHWC tensor, training then inference");
    demo->add_option("--batch", demo_arguments.batch, "N")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    demo->add_option("--height", demo_arguments.height, "H")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    demo->add_option("--width", demo_arguments.width, "W")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    demo->add_option("--channels", demo_arguments.channels, "C")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    demo->add_option("--training-calls", demo_arguments.training_calls, "Training-mode calls")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000));
    demo->add_option("--inference-calls", demo_arguments.inference_calls, "Inference-mode calls")
        ->capture_default_str()
        ->check(CLI::Range(1, 1000));
    demo->add_option("--seed", demo_arguments.seed, "Seed of the random input")
        ->capture_default_str();

    keel::cli::BenchArguments bench_arguments;
    CLI::App* bench = app.add_subcommand(
        "bench",
        "Time one BatchNormalization configuration; the last line of stdout is a JSON object "
        "(exit status 2 and a message on stderr on any error)");
    bench->add_option("--config", bench_arguments.config,
                      "JSON file: {\"class_name\": \"BatchNormalization\", \"config\": {...}} or "
                      "the bare config");
    bench->add_option("--shape", bench_arguments.shape, "Input shape, e.g. 32,56,56,64");
    bench->add_option("--training", bench_arguments.training, "1: training call, 0: inference")
        ->capture_default_str();
    bench->add_option("--dtype", bench_arguments.dtype,
                      "f32|bf16|f16 (or float32|bfloat16|float16); default: the config's dtype");
    bench->add_option("--repeat", bench_arguments.repeat, "Timed calls")->capture_default_str();
    bench->add_option("--threads", bench_arguments.threads,
                      "Threads; default: KEEL_NUM_THREADS, else every core");

    keel::cli::GraphRunArguments graph_run_arguments;
    CLI::App* graph_run = app.add_subcommand(
        "graph-run",
        "Run a Keras functional model (model.to_json() + weights as DIR/<layer>/<variable>.npy) "
        "on .npy inputs; writes DIR/<output>.npy and DIR/result.json (exit status 2 and an "
        "\"error\" object on failure, 1 when concurrent results differ)");
    graph_run->add_option("model", graph_run_arguments.model, "The model config (JSON)")
        ->required();
    graph_run->add_option("--weights", graph_run_arguments.weights, "Weights directory")
        ->required();
    graph_run
        ->add_option("--input", graph_run_arguments.inputs,
                     "Input .npy, once per model input in order")
        ->required();
    graph_run->add_option("--out", graph_run_arguments.out_dir, "Output directory (created)")
        ->required();
    graph_run->add_flag("--training", graph_run_arguments.training,
                        "One training-mode run; also writes DIR/variables/<layer>/<moving_*>.npy");
    graph_run->add_flag("--no-optimize", graph_run_arguments.no_optimize,
                        "Run the graph as written (no folding or fusion)");
    CLI::Option* repeat = graph_run
                              ->add_option("--repeat", graph_run_arguments.repeat,
                                           "Timed inference runs after one warm-up")
                              ->capture_default_str();
    graph_run->add_option("--threads", graph_run_arguments.threads,
                          "With --requests: serving threads");
    graph_run->add_option("--requests", graph_run_arguments.requests,
                          "With --threads: inference requests served concurrently and checked "
                          "against the single-threaded result");

    CLI11_PARSE(app, argc, argv);
    graph_run_arguments.repeat_given = repeat->count() > 0;

    if (*info) {
        return guarded([] { return keel::cli::run_info(); });
    }
    if (*layer_run) {
        return guarded([&] { return keel::cli::run_layer_run(layer_run_arguments); });
    }
    if (*demo) {
        return guarded([&] { return keel::cli::run_demo(demo_arguments); });
    }
    if (*bench) {
        return guarded([&] { return keel::cli::run_bench(bench_arguments); });
    }
    if (*graph_run) {
        return guarded([&] { return keel::cli::run_graph_run(graph_run_arguments); });
    }
    return 1;
}
