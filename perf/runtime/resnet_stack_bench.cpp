// Graph-level cases of the perf suite (issue 7, items 4 and 5; issue 6's serving target): a
// ResNet-style stack and a 50-block convolution chain built with keel's GraphBuilder, run through
// Model::run with and without the inference rewrites (CompileOptions::optimize), for
//   - single-request latency at 1 and 2 intra-op threads,
//   - throughput: single-sample requests served from 1 and from 2 client threads on one compiled
//     model (ThreadingOptions preference = throughput),
//   - peak heap memory of one run, next to the sizes of the activations it produces;
// and, for the ResNet stack's latency cases, the same network written directly with oneDNN
// (resnet_stack_onednn_peer.cpp, "peer:onednn"), checked against keel's output and timed right
// after keel's cases, plus the diagnostic "graph_breakdown/.../op:keel_eager_folded" chain.
// The benchmarks register themselves when keel_perf starts, so they run before the
// BatchNormalization rounds; perf/report/make_report.py turns them into the report's "Graph"
// section (docs/perf.md).
#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>
#include <keel/engine/engine.hpp>
#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/engine/tensor_cache.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/core/dense.hpp>
#include <keel/layers/merging/add.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/layers/pooling/global_average_pooling2d.hpp>
#include <keel/runtime/graph_builder.hpp>
#include <keel/runtime/model.hpp>

#include "perf/runtime/resnet_stack_onednn_peer.hpp"
#include "perf/support/heap_usage.hpp"

namespace keel::perf {
namespace {

// ResNet's first stage: 56x56 images of 64 channels, NHWC.
constexpr std::int64_t kImageSize = 56;
constexpr std::int64_t kChannels = 64;
constexpr int kResidualBlocks = 4;
constexpr std::int64_t kClasses = 1000;
constexpr int kChainBlocks = 50;
// Single-sample requests per timed iteration of a throughput case, split evenly between clients.
constexpr int kRequestsPerIteration = 8;

enum class Architecture {
    // The graph: stem Conv 3x3/64 -> BN -> ReLU, then residual blocks
    // Conv -> BN -> ReLU -> Conv -> BN -> Add(block input) -> ReLU, GlobalAveragePooling2D,
    // Dense(1000). Every Conv2D is 3x3 'same' without bias, so folding must give it one.
    resnet_stack,
    // 50 x (Conv2D 1x1 with bias -> ReLU): 100 layers in one chain, for the claim that a run's
    // peak memory is a small multiple of the largest activation, not the sum of all of them.
    conv_chain,
};

std::string_view architecture_name(Architecture architecture) {
    return architecture == Architecture::resnet_stack ? "resnet_stack" : "conv_chain50";
}

// SplitMix64: a fixed sequence, so that every run of the suite computes the same numbers.
class Random {
  public:
    explicit Random(std::uint64_t seed) : state_(seed) {}
    // Uniform in [low, high).
    double uniform(double low, double high) {
        state_ += 0x9E3779B97F4A7C15ull;
        std::uint64_t z = state_;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        return low + (high - low) * static_cast<double>(z >> 11) * 0x1.0p-53;
    }

    Tensor tensor(const Shape& shape, double low, double high) {
        std::vector<float> values(static_cast<std::size_t>(element_count(shape)));
        for (float& value : values) {
            value = static_cast<float>(uniform(low, high));
        }
        return Tensor::from_floats(shape, values);
    }

  private:
    std::uint64_t state_;
};

// One graph (its layers and their variables) compiled twice: with the inference rewrites and
// without. Both models share the layers, so they compute from the same variables.
struct Network {
    Model optimized;
    Model unoptimized;
    // Every layer's output shape as written (batch dimension -1): the activations of an
    // unoptimized run.
    std::vector<Shape> activation_shapes;
    // Sum over the convolutions and Dense layers of the square root of their dot-product length
    // (kernel height x width x input channels, or input units): every one of them lies on the
    // path from the input to the output, so this scales the rounding one output accumulates.
    double rounding_growth = 0.0;

    std::int64_t activation_bytes(std::int64_t batch, bool largest) const {
        std::int64_t result = 0;
        for (Shape shape : activation_shapes) {
            shape.front() = batch;
            const std::int64_t bytes = element_count(shape) * 4;  // f32
            result = largest ? std::max(result, bytes) : result + bytes;
        }
        return result;
    }
};

// Builds a Network layer by layer, giving every variable deterministic, non-trivial values:
// BatchNormalization statistics that differ from 0 and 1, so folding has something to fold.
class NetworkBuilder {
  public:
    explicit NetworkBuilder(const Engine& engine)
        : engine_(engine), graph_(engine), random_(0x6B65656C) /* "keel" */ {}

    SymbolicTensor input() {
        input_ = graph_.input({kImageSize, kImageSize, kChannels}, "image");
        return input_;
    }

    SymbolicTensor conv(const SymbolicTensor& x, std::int64_t kernel, bool use_bias) {
        Conv2DOptions options;
        options.filters = kChannels;
        options.kernel_size = {kernel, kernel};
        options.padding = "same";
        options.use_bias = use_bias;
        auto layer = std::make_shared<Conv2D>(options, engine_);
        const SymbolicTensor y = apply(layer, x);
        const std::int64_t fan_in = kernel * kernel * kChannels;
        // He-uniform: keeps activations of about the same magnitude through a ReLU chain, so the
        // 50th layer's output is neither vanishing nor overflowing.
        const double limit = std::sqrt(6.0 / static_cast<double>(fan_in));
        layer->set_variable("kernel",
                            random_.tensor({kernel, kernel, kChannels, kChannels}, -limit, limit));
        if (use_bias) {
            layer->set_variable("bias", random_.tensor({kChannels}, -0.1, 0.1));
        }
        rounding_growth_ += std::sqrt(static_cast<double>(fan_in));
        return y;
    }

    SymbolicTensor batch_normalization(const SymbolicTensor& x) {
        auto layer = std::make_shared<BatchNormalization>(BatchNormalizationOptions{}, engine_);
        const SymbolicTensor y = apply(layer, x);
        layer->set_variable("gamma", random_.tensor({kChannels}, 0.5, 1.5));
        layer->set_variable("beta", random_.tensor({kChannels}, -0.5, 0.5));
        layer->set_variable("moving_mean", random_.tensor({kChannels}, -0.5, 0.5));
        layer->set_variable("moving_variance", random_.tensor({kChannels}, 0.5, 2.0));
        return y;
    }

    SymbolicTensor relu(const SymbolicTensor& x) {
        return apply(std::make_shared<ReLU>(ReLUOptions{}, engine_), x);
    }

    SymbolicTensor add(const SymbolicTensor& a, const SymbolicTensor& b) {
        return apply(std::make_shared<Add>(AddOptions{}, engine_), {a, b});
    }

    SymbolicTensor global_average_pooling(const SymbolicTensor& x) {
        return apply(
            std::make_shared<GlobalAveragePooling2D>(GlobalAveragePooling2DOptions{}, engine_), x);
    }

    SymbolicTensor dense(const SymbolicTensor& x, std::int64_t units) {
        DenseOptions options;
        options.units = units;
        auto layer = std::make_shared<Dense>(options, engine_);
        const SymbolicTensor y = apply(layer, x);
        const std::int64_t inputs = x.shape().back();
        const double limit = std::sqrt(6.0 / static_cast<double>(inputs + units));
        layer->set_variable("kernel", random_.tensor({inputs, units}, -limit, limit));
        layer->set_variable("bias", random_.tensor({units}, -0.1, 0.1));
        rounding_growth_ += std::sqrt(static_cast<double>(inputs));
        return y;
    }

    std::unique_ptr<Network> compile(const SymbolicTensor& output) {
        return std::make_unique<Network>(
            Network{.optimized = graph_.compile({input_}, {output}, {.optimize = true}),
                    .unoptimized = graph_.compile({input_}, {output}, {.optimize = false}),
                    .activation_shapes = activation_shapes_,
                    .rounding_growth = rounding_growth_});
    }

  private:
    SymbolicTensor apply(std::shared_ptr<Layer> layer, const std::vector<SymbolicTensor>& inputs) {
        SymbolicTensor y = graph_.apply(std::move(layer), inputs);
        activation_shapes_.push_back(y.shape());
        return y;
    }
    SymbolicTensor apply(std::shared_ptr<Layer> layer, const SymbolicTensor& x) {
        return apply(std::move(layer), std::vector<SymbolicTensor>{x});
    }

    Engine engine_;
    GraphBuilder graph_;
    Random random_;
    SymbolicTensor input_;
    std::vector<Shape> activation_shapes_;
    double rounding_growth_ = 0.0;
};

std::unique_ptr<Network> build_network(Architecture architecture, const Engine& engine) {
    NetworkBuilder builder(engine);
    SymbolicTensor x = builder.input();
    if (architecture == Architecture::conv_chain) {
        for (int block = 0; block < kChainBlocks; ++block) {
            x = builder.relu(builder.conv(x, 1, /*use_bias=*/true));
        }
        return builder.compile(x);
    }
    const auto conv_bn = [&](const SymbolicTensor& in) {
        return builder.batch_normalization(builder.conv(in, 3, /*use_bias=*/false));
    };
    x = builder.relu(conv_bn(x));
    for (int block = 0; block < kResidualBlocks; ++block) {
        const SymbolicTensor residual = conv_bn(builder.relu(conv_bn(x)));
        x = builder.relu(builder.add(residual, x));
    }
    return builder.compile(builder.dense(builder.global_average_pooling(x), kClasses));
}

// Engines, networks and inputs live for the whole process: benchmarks that share them (the two
// models of a network, repeated runs of a case) find their primitives already created.
const Engine& engine_for(int intra_op_threads, ThreadingOptions::Preference preference) {
    static std::map<std::pair<int, ThreadingOptions::Preference>, Engine> engines;
    const auto key = std::pair{intra_op_threads, preference};
    auto found = engines.find(key);
    if (found == engines.end()) {
        found = engines
                    .emplace(key, Engine(ThreadingOptions{.intra_op_threads = intra_op_threads,
                                                          .preference = preference}))
                    .first;
    }
    return found->second;
}

const Network& network_for(Architecture architecture, int intra_op_threads,
                           ThreadingOptions::Preference preference) {
    static std::map<std::tuple<Architecture, int, ThreadingOptions::Preference>,
                    std::unique_ptr<Network>>
        networks;
    std::unique_ptr<Network>& network = networks[{architecture, intra_op_threads, preference}];
    if (!network) {
        network = build_network(architecture, engine_for(intra_op_threads, preference));
    }
    return *network;
}

// Images with values in [-1, 1), the same for every case of a batch size.
const std::vector<Tensor>& inputs_for(std::int64_t batch) {
    static std::map<std::int64_t, std::vector<Tensor>> inputs;
    std::vector<Tensor>& found = inputs[batch];
    if (found.empty()) {
        Random random(0x696D616765ull + static_cast<std::uint64_t>(batch));  // "image"
        found.push_back(random.tensor({batch, kImageSize, kImageSize, kChannels}, -1.0, 1.0));
    }
    return found;
}

// Largest |optimized - unoptimized| a correct rewrite may produce, for outputs at most `largest`
// in magnitude. Each convolution and Dense output is a float32 dot product of length K; its
// rounding errors have random signs, so they grow like sqrt(K) * 2^-24 of the result (the worst
// case K * 2^-24 is ~25x looser and never reached). Folding scales every weight (one more
// rounding) and so changes every product: the two models round independently, 2 * sqrt(K) * 2^-24
// per layer. Earlier layers' errors reach the output through later layers whose gains stay near 1
// (He-scaled kernels, batch normalization scales within [0.35, 2.1], residual sums); a factor 4
// covers those gains and the tails of the error distribution, and the layers' errors add up along
// the path. For the ResNet stack this is ~1e-4 of the largest output, while a rewrite changes
// outputs by ~4e-7 of it (measured); dropping epsilon from one fold moves that layer's outputs by
// >= 2.5e-4, and a missing shift or bias or a scale on the wrong axis by more than 1e-2.
double tolerance(const Network& network, double largest) {
    return 4.0 * 2.0 * network.rounding_growth * 0x1.0p-24 * largest;
}

// Why `got` (the output of `what`) is not `want` (the output of `reference`) within tolerance(),
// or nothing when every element is.
std::optional<std::string> rounding_mismatch(const Network& network, std::span<const float> want,
                                             std::span<const float> got, const std::string& what,
                                             const std::string& reference) {
    if (want.size() != got.size()) return what + "'s output size differs from " + reference + "'s";
    double largest = 0.0;
    for (const float value : want) {
        largest = std::max(largest, static_cast<double>(std::abs(value)));
    }
    const double bound = tolerance(network, largest);
    for (std::size_t i = 0; i < want.size(); ++i) {
        if (!(std::abs(static_cast<double>(got[i]) - want[i]) <= bound)) {
            return what + " output[" + std::to_string(i) + "] = " + std::to_string(got[i]) + "; " +
                   reference + " " + std::to_string(want[i]) + ", tolerance " +
                   std::to_string(bound);
        }
    }
    return std::nullopt;
}

// Why the optimized model's output for `inputs` is not the unoptimized one's within rounding, or
// nothing when it is.
std::optional<std::string> optimized_mismatch(const Network& network,
                                              const std::vector<Tensor>& inputs) {
    const std::vector<Tensor> expected = network.unoptimized.run(inputs);
    const std::vector<Tensor> actual = network.optimized.run(inputs);
    if (expected.size() != 1 || actual.size() != 1 ||
        expected.front().shape() != actual.front().shape()) {
        return "optimized output shape differs from the unoptimized one";
    }
    return rounding_mismatch(network, expected.front().to_floats(), actual.front().to_floats(),
                             "optimized", "unoptimized");
}

// Compares the two models of `network` on `inputs` the first time a case of `key` runs (Google
// Benchmark calls a benchmark several times); false, and the benchmark failed, when they differ.
bool check_once(benchmark::State& state, const Network& network, const std::vector<Tensor>& inputs,
                const std::string& key) {
    static std::set<std::string> checked;
    if (checked.contains(key)) {
        return true;
    }
    if (const auto why = optimized_mismatch(network, inputs)) {
        state.SkipWithError(why->c_str());
        return false;
    }
    checked.insert(key);
    return true;
}

// Peak heap growth of one run, its output included (the caller's input is not: it existed
// before). Measured on a warm model: primitives, folded weights and per-thread scratch buffers
// that persist between runs were created by earlier runs and are not part of one run's cost.
// keel's tensor cache is emptied first, so the run allocates every activation afresh; a block it
// frees stays counted while the cache holds it, as it stays in the process.
std::int64_t peak_run_bytes(const Model& model, const std::vector<Tensor>& inputs) {
    keel::release_tensor_cache();
    const HeapPeakTracker tracker;
    const std::vector<Tensor> outputs = model.run(inputs);
    benchmark::DoNotOptimize(outputs.front().data());
    return tracker.peak_bytes();
}

void set_memory_counters(benchmark::State& state, const Network& network, std::int64_t batch,
                         std::int64_t peak_bytes) {
    state.counters["batch"] = static_cast<double>(batch);
    state.counters["peak_bytes"] = static_cast<double>(peak_bytes);
    state.counters["largest_activation_bytes"] =
        static_cast<double>(network.activation_bytes(batch, /*largest=*/true));
    state.counters["activation_bytes"] =
        static_cast<double>(network.activation_bytes(batch, /*largest=*/false));
    state.counters["layers"] = static_cast<double>(network.activation_shapes.size());
}

struct LatencyCase {
    Architecture architecture = Architecture::resnet_stack;
    std::int64_t batch = 1;
    int threads = 1;
    bool optimize = true;
};

// One request at a time on an engine with `threads` intra-op threads and the latency preference
// (a lone run takes every core it may use).
void run_latency(benchmark::State& state, const LatencyCase& spec) {
    const Network& network =
        network_for(spec.architecture, spec.threads, ThreadingOptions::Preference::latency);
    const Model& model = spec.optimize ? network.optimized : network.unoptimized;
    const std::vector<Tensor>& inputs = inputs_for(spec.batch);
    const std::string key = std::string(architecture_name(spec.architecture)) + "/" +
                            std::to_string(spec.batch) + "/" + std::to_string(spec.threads);
    // Also the untimed first run of both models: primitives for this batch, folded weights.
    if (!check_once(state, network, inputs, key)) {
        return;
    }
    const std::int64_t peak = peak_run_bytes(model, inputs);
    for (auto _ : state) {
        const std::vector<Tensor> outputs = model.run(inputs);
        benchmark::DoNotOptimize(outputs.front().data());
    }
    set_memory_counters(state, network, spec.batch, peak);
    state.counters["threads"] = spec.threads;
    state.counters["passes"] = static_cast<double>(model.passes().size());
    state.SetLabel(std::to_string(model.passes().size()) + " rewrites");
}

struct ThroughputCase {
    Architecture architecture = Architecture::resnet_stack;
    int clients = 1;
    bool optimize = true;
};

// The serving engine: 2 intra-op threads with the throughput preference, so that each of two
// concurrent runs gets a core of its own, and a lone run one core.
constexpr int kServingThreads = 2;

// Client threads that live for a whole benchmark, as a server's request threads do. Threads
// started per iteration would pay, inside the timed region, for what a thread sets up on its
// first run (keel's per-thread scratch buffers, OpenMP's per-thread state).
class ClientPool {
  public:
    // `serve(client)` must not throw.
    ClientPool(int clients, std::function<void(int)> serve) : serve_(std::move(serve)) {
        threads_.reserve(static_cast<std::size_t>(clients));
        for (int client = 0; client < clients; ++client) {
            threads_.emplace_back(
                [this, client](const std::stop_token& stop) { serve_rounds(stop, client); });
        }
    }

    // Every client calls serve once; returns when all of them are done.
    void serve_round() {
        std::unique_lock lock(mutex_);
        pending_ = static_cast<int>(threads_.size());
        ++round_;
        round_started_.notify_all();
        round_finished_.wait(lock, [&] { return pending_ == 0; });
    }

  private:
    void serve_rounds(const std::stop_token& stop, int client) {
        std::uint64_t served = 0;
        for (;;) {
            {
                std::unique_lock lock(mutex_);
                if (!round_started_.wait(lock, stop, [&] { return round_ != served; })) {
                    return;
                }
                served = round_;
            }
            serve_(client);
            const std::lock_guard lock(mutex_);
            if (--pending_ == 0) {
                round_finished_.notify_one();
            }
        }
    }

    std::function<void(int)> serve_;
    std::mutex mutex_;
    std::condition_variable_any round_started_;
    std::condition_variable round_finished_;
    std::uint64_t round_ = 0;
    int pending_ = 0;
    // Last: destroyed first, so the threads are stopped and joined while the rest still exists.
    std::vector<std::jthread> threads_;
};

// kRequestsPerIteration single-sample requests, served by `clients` threads that each send their
// share one after another, on one compiled model. Every result must equal, bit for bit, the
// result of a run made before on its own (issue 6: concurrent runs are identical to a serial one).
void run_throughput(benchmark::State& state, const ThroughputCase& spec) {
    const Network& network =
        network_for(spec.architecture, kServingThreads, ThreadingOptions::Preference::throughput);
    const Model& model = spec.optimize ? network.optimized : network.unoptimized;
    const std::vector<Tensor>& inputs = inputs_for(1);
    const std::string key = std::string(architecture_name(spec.architecture)) + "/1/serving" +
                            std::to_string(kServingThreads);
    if (!check_once(state, network, inputs, key)) {
        return;
    }
    const Tensor expected = model.run(inputs).front();
    const auto matches = [&](const Tensor& output) {
        return output.shape() == expected.shape() && output.dtype() == expected.dtype() &&
               std::memcmp(output.data(), expected.data(), expected.byte_size()) == 0;
    };

    std::mutex failure_mutex;
    std::string failure;
    const auto serve = [&](int client) {
        // Requests split as evenly as they go.
        const int requests = kRequestsPerIteration / spec.clients +
                             (client < kRequestsPerIteration % spec.clients ? 1 : 0);
        try {
            for (int request = 0; request < requests; ++request) {
                if (!matches(model.run(inputs).front())) {
                    const std::lock_guard lock(failure_mutex);
                    failure = "a concurrent run's output differs from the serial run's";
                    return;
                }
            }
        } catch (const std::exception& error) {
            const std::lock_guard lock(failure_mutex);
            failure = error.what();
        }
    };
    ClientPool clients(spec.clients, serve);
    // Untimed: each client's first run sets up its thread.
    clients.serve_round();
    for (auto _ : state) {
        clients.serve_round();
        const std::lock_guard lock(failure_mutex);
        if (!failure.empty()) {
            state.SkipWithError(failure.c_str());
            break;
        }
    }
    state.counters["batch"] = 1;
    state.counters["clients"] = spec.clients;
    state.counters["requests"] = kRequestsPerIteration;
    state.counters["passes"] = static_cast<double>(model.passes().size());
    state.SetLabel(std::to_string(model.passes().size()) + " rewrites");
}

template <typename Case, typename Runner>
void register_case(const std::string& name, const Case& spec, Runner runner) {
    benchmark::RegisterBenchmark(name.c_str(),
                                 [spec, runner](benchmark::State& state) {
                                     try {
                                         runner(state, spec);
                                     } catch (const std::exception& error) {
                                         state.SkipWithError(error.what());
                                     }
                                 })
        ->Unit(benchmark::kMillisecond)
        // Wall time: the runs' worker threads are not this thread.
        ->UseRealTime();
}

std::string_view optimize_label(bool optimize) { return optimize ? "on" : "off"; }

// The weights of the network's unoptimized model, in the peer's terms: each Conv2D with the
// BatchNormalization that follows it (layers() is in topological order, and in this stack every
// BatchNormalization follows its convolution before the next one starts), then the Dense layer.
ResnetStackParameters peer_parameters(const Network& network) {
    ResnetStackParameters parameters;
    parameters.image_size = kImageSize;
    parameters.channels = kChannels;
    parameters.classes = kClasses;
    for (const std::shared_ptr<Layer>& layer : network.unoptimized.layers()) {
        const std::string class_name = layer->class_name();
        if (class_name == "Conv2D") {
            ConvolutionBatchNormalization& convolution = parameters.convolutions.emplace_back();
            convolution.kernel = layer->variable("kernel").to_floats();
            if (layer->has_variable("bias")) convolution.bias = layer->variable("bias").to_floats();
        } else if (class_name == "BatchNormalization") {
            if (parameters.convolutions.empty()) {
                throw internal_error("peer_parameters", "a BatchNormalization before any Conv2D");
            }
            ConvolutionBatchNormalization& convolution = parameters.convolutions.back();
            convolution.gamma = layer->variable("gamma").to_floats();
            convolution.beta = layer->variable("beta").to_floats();
            convolution.moving_mean = layer->variable("moving_mean").to_floats();
            convolution.moving_variance = layer->variable("moving_variance").to_floats();
            convolution.epsilon = layer->get_config().at("epsilon").get<double>();
        } else if (class_name == "Dense") {
            parameters.dense_kernel = layer->variable("kernel").to_floats();
            parameters.dense_bias = layer->variable("bias").to_floats();
        }
    }
    return parameters;
}

// The hand-written oneDNN pipeline for a batch size and thread count, created on first use.
const ResnetStackOneDnnPeer& peer_for(const Network& network, std::int64_t batch, int threads) {
    static std::map<std::pair<std::int64_t, int>, std::unique_ptr<ResnetStackOneDnnPeer>> peers;
    std::unique_ptr<ResnetStackOneDnnPeer>& peer = peers[{batch, threads}];
    if (!peer) {
        peer = std::make_unique<ResnetStackOneDnnPeer>(peer_parameters(network), batch, threads);
    }
    return *peer;
}

// Why the peer's output differs from the unoptimized keel model's by more than rounding, or
// nothing. The peer folds every BatchNormalization and sums in its own order, exactly the
// difference tolerance() bounds between the optimized and the unoptimized model.
std::optional<std::string> peer_mismatch(const Network& network, const ResnetStackOneDnnPeer& peer,
                                         const std::vector<Tensor>& inputs,
                                         std::vector<float>& output) {
    const std::vector<float> want = network.unoptimized.run(inputs).front().to_floats();
    if (want.size() != output.size()) return "the peer's output size differs from keel's";
    peer.run(inputs.front().data_as<float>(), output.data());
    return rounding_mismatch(network, want, output, "oneDNN peer", "keel unoptimized");
}

// The same request as run_latency's, on the hand-written oneDNN pipeline: same weights, same
// input, output into a buffer made once (the pipeline allocates nothing per run).
void run_onednn_peer(benchmark::State& state, const LatencyCase& spec) {
    const Network& network = network_for(Architecture::resnet_stack, spec.threads,
                                         ThreadingOptions::Preference::latency);
    const std::vector<Tensor>& inputs = inputs_for(spec.batch);
    const ResnetStackOneDnnPeer& peer = peer_for(network, spec.batch, spec.threads);
    std::vector<float> output(static_cast<std::size_t>(spec.batch * kClasses));
    static std::set<std::pair<std::int64_t, int>> checked;
    if (!checked.contains({spec.batch, spec.threads})) {
        if (const auto why = peer_mismatch(network, peer, inputs, output)) {
            state.SkipWithError(why->c_str());
            return;
        }
        checked.insert({spec.batch, spec.threads});
    }
    const float* input = inputs.front().data_as<float>();
    std::int64_t peak = 0;
    {
        const HeapPeakTracker tracker;
        peer.run(input, output.data());
        peak = tracker.peak_bytes();
    }
    for (auto _ : state) {
        peer.run(input, output.data());
        benchmark::DoNotOptimize(output.data());
    }
    // Where the peer's time goes, from untimed profiled runs (thread CPU time, so only
    // meaningful at 1 thread): convolutions, and the rest (input reorder, pooling, Dense).
    constexpr int kProfiledRuns = 5;
    std::vector<double> step_cpu_ms;
    for (int run = 0; run < kProfiledRuns; ++run) {
        peer.run_profiled(input, output.data(), step_cpu_ms);
    }
    const std::vector<std::string> steps = peer.step_names();
    double convolution_ms = 0.0;
    double total_ms = 0.0;
    for (std::size_t step = 0; step < steps.size(); ++step) {
        total_ms += step_cpu_ms[step] / kProfiledRuns;
        if (steps[step] == "stem" || steps[step].starts_with("block")) {
            convolution_ms += step_cpu_ms[step] / kProfiledRuns;
        }
    }
    state.counters["conv_cpu_ms"] = convolution_ms;
    state.counters["other_cpu_ms"] = total_ms - convolution_ms;
    set_memory_counters(state, network, spec.batch, peak);
    state.counters["threads"] = spec.threads;
    state.counters["passes"] = 0;
    state.SetLabel(peer.implementations());
}

double thread_cpu_ms() {
    timespec now{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) * 1e3 + static_cast<double>(now.tv_nsec) * 1e-6;
}

// The optimized model's nodes as eager Layer::call()s of layers made with keel's public API,
// with the peer's folded weights: stem Conv2D+ReLU, 4 x (Conv2D+ReLU, Conv2D, Add, ReLU),
// GlobalAveragePooling2D, Dense. Against the graph case it shows what Model::run adds; its
// per-kind thread CPU times (counters, robust to other processes taking the core; every node
// runs on the caller's thread at 1 thread) against the peer's show where keel's time goes.
// Its output must match the peer's within the same tolerance as the graph's.
void run_eager_folded(benchmark::State& state, const LatencyCase& spec) {
    const Network& network = network_for(Architecture::resnet_stack, spec.threads,
                                         ThreadingOptions::Preference::latency);
    const Engine& engine = engine_for(spec.threads, ThreadingOptions::Preference::latency);
    const ResnetStackParameters parameters = peer_parameters(network);
    std::vector<std::unique_ptr<Conv2D>> convolutions;
    for (std::size_t index = 0; index < parameters.convolutions.size(); ++index) {
        Conv2DOptions options;
        options.filters = kChannels;
        options.kernel_size = {3, 3};
        options.padding = "same";
        // The stem and each block's first convolution have their ReLU fused, as after the
        // rewrites; each block's second one feeds the Add.
        if (index == 0 || index % 2 == 1) options.activation = "relu";
        auto layer = std::make_unique<Conv2D>(options, engine);
        layer->build(Shape{-1, kImageSize, kImageSize, kChannels});
        const FoldedConvolution folded = fold(parameters.convolutions[index]);
        layer->set_variable("kernel",
                            Tensor::from_floats({3, 3, kChannels, kChannels}, folded.kernel));
        layer->set_variable("bias", Tensor::from_floats({kChannels}, folded.bias));
        convolutions.push_back(std::move(layer));
    }
    Add add_layer(AddOptions{}, engine);
    ReLU relu(ReLUOptions{}, engine);
    GlobalAveragePooling2D pooling(GlobalAveragePooling2DOptions{}, engine);
    DenseOptions dense_options;
    dense_options.units = kClasses;
    Dense dense(dense_options, engine);
    dense.build(Shape{-1, kChannels});
    dense.set_variable("kernel",
                       Tensor::from_floats({kChannels, kClasses}, parameters.dense_kernel));
    dense.set_variable("bias", Tensor::from_floats({kClasses}, parameters.dense_bias));

    const std::vector<Tensor>& inputs = inputs_for(spec.batch);
    std::array<double, 4> cpu_ms{};  // convolutions, Add, ReLU, pooling + Dense
    const auto timed = [&](std::size_t kind, auto&& call) {
        const double start = thread_cpu_ms();
        Tensor y = call();
        cpu_ms[kind] += thread_cpu_ms() - start;
        return y;
    };
    const auto run = [&] {
        Tensor block_input = timed(0, [&] { return convolutions[0]->call(inputs.front()); });
        for (std::size_t index = 1; index + 1 < convolutions.size(); index += 2) {
            const Tensor middle = timed(0, [&] { return convolutions[index]->call(block_input); });
            const Tensor inner = timed(0, [&] { return convolutions[index + 1]->call(middle); });
            const std::vector<Tensor> sum_inputs = {inner, block_input};
            const Tensor sum = timed(1, [&] { return add_layer.call(sum_inputs); });
            block_input = timed(2, [&] { return relu.call(sum); });
        }
        return timed(3, [&] { return dense.call(pooling.call(block_input)); });
    };

    // Checked against the peer, which the graph case checks against keel's unoptimized model.
    const std::vector<float> got = run().to_floats();
    std::vector<float> want(got.size());
    peer_for(network, spec.batch, spec.threads).run(inputs.front().data_as<float>(), want.data());
    if (const auto why = rounding_mismatch(network, want, got, "eager", "the peer")) {
        state.SkipWithError(why->c_str());
        return;
    }
    cpu_ms = {};
    for (auto _ : state) {
        const Tensor y = run();
        benchmark::DoNotOptimize(y.data());
    }
    const std::array<const char*, 4> names = {"conv_cpu_ms", "add_cpu_ms", "relu_cpu_ms",
                                              "tail_cpu_ms"};
    for (std::size_t kind = 0; kind < names.size(); ++kind) {
        state.counters[names[kind]] =
            benchmark::Counter(cpu_ms[kind], benchmark::Counter::kAvgIterations);
    }
}

// Cases in the order they run; the optimized and unoptimized models of a case back to back (and,
// for resnet_stack, the oneDNN peer after them), so their ratios come from the same minute.
bool register_graph_benchmarks() {
    // 2-thread figures depend on libgomp's wait policy whenever another process is busy
    // (docs/perf.md); the report states the one this run had.
    const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
    benchmark::AddCustomContext("omp_wait_policy",
                                wait_policy != nullptr ? wait_policy : "unset (libgomp default)");
    struct LatencyGroup {
        Architecture architecture;
        std::int64_t batch;
    };
    for (const LatencyGroup group :
         {LatencyGroup{Architecture::resnet_stack, 1}, LatencyGroup{Architecture::resnet_stack, 16},
          LatencyGroup{Architecture::conv_chain, 1}}) {
        for (const int threads : {1, 2}) {
            for (const bool optimize : {true, false}) {
                const LatencyCase spec{group.architecture, group.batch, threads, optimize};
                register_case("graph/model:" + std::string(architecture_name(group.architecture)) +
                                  "/batch:" + std::to_string(group.batch) +
                                  "/mode:latency/threads:" + std::to_string(threads) +
                                  "/optimize:" + std::string(optimize_label(optimize)),
                              spec, run_latency);
            }
            if (group.architecture == Architecture::resnet_stack) {
                const LatencyCase spec{group.architecture, group.batch, threads, true};
                register_case("graph/model:resnet_stack/batch:" + std::to_string(group.batch) +
                                  "/mode:latency/threads:" + std::to_string(threads) +
                                  "/peer:onednn",
                              spec, run_onednn_peer);
                // Diagnostic (the report leaves family graph_breakdown out): docs/perf.md.
                register_case("graph_breakdown/batch:" + std::to_string(group.batch) +
                                  "/threads:" + std::to_string(threads) + "/op:keel_eager_folded",
                              spec, run_eager_folded);
            }
        }
    }
    for (const int clients : {1, 2}) {
        const ThroughputCase spec{Architecture::resnet_stack, clients, true};
        register_case("graph/model:" + std::string(architecture_name(spec.architecture)) +
                          "/batch:1/mode:throughput/clients:" + std::to_string(clients) +
                          "/optimize:" + std::string(optimize_label(spec.optimize)),
                      spec, run_throughput);
    }
    return true;
}

[[maybe_unused]] const bool registered = register_graph_benchmarks();

}  // namespace
}  // namespace keel::perf
