#include "perf/layers/normalization/batch_normalization_bench.hpp"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>
#include <keel/engine/dtype.hpp>
#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <nlohmann/json.hpp>
#include <oneapi/dnnl/dnnl.hpp>

#include "perf/layers/normalization/batch_normalization_naive.hpp"
#include "perf/support/aligned_buffer.hpp"
#include "perf/support/line_process.hpp"

namespace keel::perf {
namespace {

// Keras' defaults, used by every peer.
constexpr float kEpsilon = 1e-3f;
constexpr float kMomentum = 0.99f;

// Inference and plain training run on every peer. The custom modes are training calls that only
// keel can express (renorm, virtual_batch_size=8, an adjustment, axis=[1, 3]); they are timed on
// keel alone, against keel's plain training on the same tensor, and their outputs are left to
// keel's tests.
enum class Mode { inference, training, renorm, virtual_batch, adjustment, multi_axis };
enum class Peer { keel, onednn, naive, torch };

std::string_view mode_name(Mode mode) {
    switch (mode) {
        case Mode::inference:
            return "inference";
        case Mode::training:
            return "training";
        case Mode::renorm:
            return "training_renorm";
        case Mode::virtual_batch:
            return "training_virtual_batch";
        case Mode::adjustment:
            return "training_adjustment";
        case Mode::multi_axis:
            return "training_multi_axis";
    }
    return "?";
}

bool is_custom(Mode mode) { return mode != Mode::inference && mode != Mode::training; }

std::string_view peer_name(Peer peer) {
    switch (peer) {
        case Peer::keel:
            return "keel";
        case Peer::onednn:
            return "onednn";
        case Peer::naive:
            return "naive";
        case Peer::torch:
            return "torch";
    }
    return "?";
}

std::string_view dtype_label(DType dtype) { return dtype == DType::bf16 ? "bf16" : "f32"; }

struct Case {
    const BatchNormalizationShape* shape = nullptr;
    Layout layout = Layout::channels_last;
    DType dtype = DType::f32;
    Mode mode = Mode::inference;
    int threads = 1;

    bool training() const { return mode != Mode::inference; }
    // The input data depends on these only, so modes, thread counts and peers share it.
    std::string data_key() const {
        return shape_label(*shape) + "/" + layout_name(layout, *shape) + "/" +
               std::string(dtype_label(dtype));
    }
};

// SplitMix64: a fixed sequence, so that every run of the suite times the same numbers.
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

  private:
    std::uint64_t state_;
};

// Largest difference from the reference a correct peer may show, for an output whose exact value
// is `expected`. Outputs here are below 4 in magnitude (|x - mean| / stddev <= sqrt(3) by
// construction, gamma <= 1.5, |beta| <= 0.5). Peers sum up to ~10^5 values per channel in f32;
// their rounding errors grow like sqrt(n) * 2^-24 relative to the sum, about 1e-5 of the mean and
// variance here, which moves an output by about 1e-5 * (1 + |y|). 2e-4 * (1 + |y|) leaves a 20x
// margin and still catches a wrong epsilon (1e-3 vs 1e-5 moves outputs by ~2e-3 * |y| for the
// smallest variances). A bf16 output is additionally rounded once: half an ulp is at most 2^-8
// of its magnitude.
double tolerance(double expected, DType dtype) {
    const double magnitude = std::abs(expected);
    double bound = 2e-4 * (1.0 + magnitude);
    if (dtype == DType::bf16) {
        bound += std::ldexp(magnitude, -8);
    }
    return bound;
}

float element(const void* data, DType dtype, std::int64_t index) {
    if (dtype == DType::bf16) {
        return bf16_bits_to_float(static_cast<const std::uint16_t*>(data)[index]);
    }
    return static_cast<const float*>(data)[index];
}

// One tensor's inputs, parameters and expected outputs, shared by every mode, thread count and
// peer of its (shape, layout, dtype). Per channel c, x = mean_c + stddev_c * u with u uniform in
// [-sqrt(3), sqrt(3)) (unit variance); means in [-2, 2] and standard deviations in [0.5, 2] make
// the statistics matter without making them ill-conditioned.
class Problem {
  public:
    explicit Problem(const Case& spec)
        : key_(spec.data_key()),
          dims_(tensor_dims(*spec.shape, spec.layout)),
          geometry_(channel_geometry(*spec.shape, spec.layout)),
          dtype_(spec.dtype),
          x_(bytes()),
          y_(bytes()) {
        const auto channels = static_cast<std::size_t>(geometry_.channels);
        std::vector<double> channel_mean(channels);
        std::vector<double> channel_stddev(channels);
        Random random(0x6B65656C);  // "keel"
        for (std::size_t c = 0; c < channels; ++c) {
            channel_mean[c] = random.uniform(-2.0, 2.0);
            channel_stddev[c] = random.uniform(0.5, 2.0);
            gamma_.push_back(static_cast<float>(random.uniform(0.5, 1.5)));
            beta_.push_back(static_cast<float>(random.uniform(-0.5, 0.5)));
            moving_mean_.push_back(
                static_cast<float>(channel_mean[c] + 0.1 * random.uniform(-1.0, 1.0)));
            moving_variance_.push_back(static_cast<float>(channel_stddev[c] * channel_stddev[c] *
                                                          random.uniform(0.8, 1.2)));
        }
        const double half_width = std::sqrt(3.0);
        for (std::int64_t i = 0; i < geometry_.elements(); ++i) {
            const auto c = static_cast<std::size_t>(channel_of(i));
            const auto value = static_cast<float>(
                channel_mean[c] + channel_stddev[c] * random.uniform(-half_width, half_width));
            if (dtype_ == DType::bf16) {
                static_cast<std::uint16_t*>(x())[i] = float_to_bf16_bits(value);
            } else {
                static_cast<float*>(x())[i] = value;
            }
        }
    }

    ~Problem() {
        if (!raw_input_file_.empty()) {
            std::error_code ignored;
            std::filesystem::remove(raw_input_file_, ignored);
        }
    }
    Problem(const Problem&) = delete;
    Problem& operator=(const Problem&) = delete;

    const std::string& key() const { return key_; }
    const std::vector<std::int64_t>& dims() const { return dims_; }
    const ChannelGeometry& geometry() const { return geometry_; }
    DType dtype() const { return dtype_; }
    std::size_t bytes() const {
        return static_cast<std::size_t>(geometry_.elements()) * dtype_size(dtype_);
    }
    void* x() { return x_.data(); }
    const void* x() const { return x_.data(); }
    // Output buffer of the peers that write into caller memory (oneDNN, the loop).
    void* y() { return y_.data(); }
    const std::vector<float>& gamma() const { return gamma_; }
    const std::vector<float>& beta() const { return beta_; }
    const std::vector<float>& moving_mean() const { return moving_mean_; }
    const std::vector<float>& moving_variance() const { return moving_variance_; }

    // Whether `peer`'s output for (mode, threads) still has to be checked. Google Benchmark calls a
    // benchmark several times (iteration estimate, repetitions); one passed check is enough.
    bool unchecked(Mode mode, int threads, Peer peer) const {
        return !checked_.contains({mode, threads, peer});
    }
    void mark_checked(Mode mode, int threads, Peer peer) { checked_.insert({mode, threads, peer}); }

    std::int64_t channel_of(std::int64_t index) const {
        return index / geometry_.inner % geometry_.channels;
    }

    // Exact outputs (double precision from the stored inputs): moving statistics at inference,
    // the batch's biased statistics in training.
    const std::vector<double>& reference(Mode mode) {
        std::vector<double>& expected = references_[mode];
        if (!expected.empty()) {
            return expected;
        }
        const auto channels = static_cast<std::size_t>(geometry_.channels);
        std::vector<double> mean(channels);
        std::vector<double> variance(channels);
        if (mode == Mode::inference) {
            mean.assign(moving_mean_.begin(), moving_mean_.end());
            variance.assign(moving_variance_.begin(), moving_variance_.end());
        } else {
            const std::int64_t count = geometry_.elements() / geometry_.channels;
            for (std::int64_t i = 0; i < geometry_.elements(); ++i) {
                mean[static_cast<std::size_t>(channel_of(i))] += element(x(), dtype_, i);
            }
            for (double& value : mean) {
                value /= static_cast<double>(count);
            }
            for (std::int64_t i = 0; i < geometry_.elements(); ++i) {
                const auto c = static_cast<std::size_t>(channel_of(i));
                const double deviation = element(x(), dtype_, i) - mean[c];
                variance[c] += deviation * deviation;
            }
            for (double& value : variance) {
                value /= static_cast<double>(count);
            }
        }
        expected.resize(static_cast<std::size_t>(geometry_.elements()));
        for (std::int64_t i = 0; i < geometry_.elements(); ++i) {
            const auto c = static_cast<std::size_t>(channel_of(i));
            const double normalized = (element(x(), dtype_, i) - mean[c]) /
                                      std::sqrt(variance[c] + static_cast<double>(kEpsilon));
            expected[static_cast<std::size_t>(i)] = normalized * gamma_[c] + beta_[c];
        }
        return expected;
    }

    // The input as raw bytes in a file, for a peer in another process (written once).
    const std::filesystem::path& raw_input_file() {
        if (raw_input_file_.empty()) {
            static int serial = 0;
            std::filesystem::path path =
                std::filesystem::temp_directory_path() /
                ("keel_perf_" + std::to_string(getpid()) + "_" + std::to_string(serial++) + ".bin");
            std::ofstream file(path, std::ios::binary);
            file.write(static_cast<const char*>(x()), static_cast<std::streamsize>(bytes()));
            if (!file) {
                throw std::runtime_error("cannot write " + path.string());
            }
            raw_input_file_ = std::move(path);
        }
        return raw_input_file_;
    }

  private:
    std::string key_;
    std::vector<std::int64_t> dims_;
    ChannelGeometry geometry_;
    DType dtype_;
    AlignedBuffer<std::byte> x_;
    AlignedBuffer<std::byte> y_;
    std::vector<float> gamma_;
    std::vector<float> beta_;
    std::vector<float> moving_mean_;
    std::vector<float> moving_variance_;
    std::map<Mode, std::vector<double>> references_;
    std::set<std::tuple<Mode, int, Peer>> checked_;
    std::filesystem::path raw_input_file_;
};

// Cases run in registration order, so the current problem is kept until a case needs another;
// only one tensor's data is alive at a time.
Problem& problem_for(const Case& spec) {
    static std::unique_ptr<Problem> current;
    if (!current || current->key() != spec.data_key()) {
        current.reset();
        current = std::make_unique<Problem>(spec);
    }
    return *current;
}

// Why `output` is not the expected result, or nothing when every element is within tolerance.
std::optional<std::string> mismatch(Problem& problem, Mode mode, const void* output,
                                    DType output_dtype) {
    if (output_dtype != problem.dtype()) {
        return "output dtype " + std::string(dtype_name(output_dtype)) + "; expected " +
               std::string(dtype_name(problem.dtype()));
    }
    const std::vector<double>& expected = problem.reference(mode);
    for (std::size_t i = 0; i < expected.size(); ++i) {
        const float actual = element(output, output_dtype, static_cast<std::int64_t>(i));
        if (!(std::abs(actual - expected[i]) <= tolerance(expected[i], output_dtype))) {
            return "output[" + std::to_string(i) + "] = " + std::to_string(actual) + "; expected " +
                   std::to_string(expected[i]) + " within " +
                   std::to_string(tolerance(expected[i], output_dtype));
        }
    }
    return std::nullopt;
}

// Checks `peer`'s output for `spec` the first time it is produced; false (and the benchmark
// failed) when it is wrong.
bool check_once(benchmark::State& state, Problem& problem, const Case& spec, Peer peer,
                const void* output, DType output_dtype) {
    if (!problem.unchecked(spec.mode, spec.threads, peer)) {
        return true;
    }
    if (const auto why = mismatch(problem, spec.mode, output, output_dtype)) {
        state.SkipWithError(why->c_str());
        return false;
    }
    problem.mark_checked(spec.mode, spec.threads, peer);
    return true;
}

std::int64_t minimal_bytes(const Problem& problem, Mode mode) {
    // Inference reads x and writes y; training must also read x once more for the statistics.
    const auto passes = mode == Mode::inference ? 2 : 3;  // custom modes: as plain training
    return passes * static_cast<std::int64_t>(problem.bytes());
}

void report_rates(benchmark::State& state, const Problem& problem, Mode mode) {
    const std::int64_t bytes = minimal_bytes(problem, mode);
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * bytes);
    state.counters["minimal_bytes"] = static_cast<double>(bytes);
}

// What a training step does besides normalizing: fold the batch statistics into the moving ones
// (unbiased variance, as Keras' fused path). Part of every training peer's timed work.
void update_moving(std::vector<float>& moving_mean, std::vector<float>& moving_variance,
                   const std::vector<float>& batch_mean, const std::vector<float>& batch_variance,
                   std::int64_t count) {
    const float bessel = static_cast<float>(count) / static_cast<float>(count - 1);
    for (std::size_t c = 0; c < moving_mean.size(); ++c) {
        moving_mean[c] = moving_mean[c] * kMomentum + batch_mean[c] * (1.0f - kMomentum);
        moving_variance[c] =
            moving_variance[c] * kMomentum + batch_variance[c] * bessel * (1.0f - kMomentum);
    }
}

// The PyTorch peer runs in another process on the same cores. OpenMP and TBB workers spin for a
// few milliseconds after their last task before they sleep, so the process that just ran would
// steal cores from the other one (measured: 2-thread PyTorch calls on a tiny tensor take 7 ms
// instead of 6 us right after the loop's OpenMP team ran). Each hand-over waits for them to idle.
enum class Process { benchmark, torch };

void hand_over_to(Process next) {
    static Process current = Process::benchmark;
    if (next != current) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        current = next;
    }
}

keel::Engine& keel_engine(int threads) {
    static std::map<int, keel::Engine> engines;
    auto found = engines.find(threads);
    if (found == engines.end()) {
        found =
            engines
                .emplace(threads, keel::Engine(keel::ThreadingOptions{.intra_op_threads = threads}))
                .first;
    }
    return found->second;
}

keel::BatchNormalizationOptions keel_options(const Case& spec, std::int64_t channels) {
    keel::BatchNormalizationOptions options;
    options.axis = channel_axis(spec.layout);
    options.epsilon = kEpsilon;
    options.momentum = kMomentum;
    options.dtype = spec.dtype == DType::bf16 ? "bfloat16" : "float32";
    switch (spec.mode) {
        case Mode::inference:
        case Mode::training:
            break;
        case Mode::renorm:
            // The clipping of the batch renormalization paper's later training phase.
            options.renorm = true;
            options.renorm_clipping = {{"rmax", 3.0}, {"rmin", 1.0 / 3.0}, {"dmax", 5.0}};
            break;
        case Mode::virtual_batch:
            options.virtual_batch_size = 8;
            break;
        case Mode::adjustment:
            // A fixed per-channel scale and bias, made on every call as a user's callable would.
            options.adjustment = [channels](const keel::Shape&) {
                return std::pair{keel::Tensor::filled({channels}, 1.1f),
                                 keel::Tensor::filled({channels}, 0.1f)};
            };
            break;
        case Mode::multi_axis:
            // Per (row, channel) statistics of an image: parameters of shape [H, C].
            options.axis = std::vector<int>{1, 3};
            break;
    }
    return options;
}

void run_keel(benchmark::State& state, const Case& spec) {
    hand_over_to(Process::benchmark);
    Problem& problem = problem_for(spec);
    keel::BatchNormalization layer(keel_options(spec, problem.geometry().channels),
                                   keel_engine(spec.threads));
    layer.build(problem.dims());
    if (!is_custom(spec.mode)) {
        const keel::Shape parameter_shape{problem.geometry().channels};
        layer.set_variable("gamma", keel::Tensor::from_floats(parameter_shape, problem.gamma()));
        layer.set_variable("beta", keel::Tensor::from_floats(parameter_shape, problem.beta()));
        layer.set_variable("moving_mean",
                           keel::Tensor::from_floats(parameter_shape, problem.moving_mean()));
        layer.set_variable("moving_variance",
                           keel::Tensor::from_floats(parameter_shape, problem.moving_variance()));
    }

    const keel::Tensor x = keel::Tensor::view(problem.x(), problem.dims(), spec.dtype);
    const keel::CallOptions call{.training = spec.training()};
    // Untimed: the first call plans the path and creates its primitive.
    const keel::Tensor first = layer.call(x, call);
    if (first.shape() != problem.dims()) {
        state.SkipWithError(("output shape " + keel::shape_to_string(first.shape())).c_str());
        return;
    }
    if (!is_custom(spec.mode) &&
        !check_once(state, problem, spec, Peer::keel, first.data(), first.dtype())) {
        return;
    }
    for (auto _ : state) {
        // The output of one call is dropped before the next, as in a loop over batches.
        keel::Tensor y = layer.call(x, call);
        benchmark::DoNotOptimize(y.data());
    }
    const keel::BatchNormalizationCallReport report = layer.last_call_report();
    state.SetLabel(report.path + ":" + report.implementation);
    report_rates(state, problem, spec.mode);
    state.counters["bytes_moved"] = static_cast<double>(report.bytes_moved);
}

void run_onednn(benchmark::State& state, const Case& spec) {
    hand_over_to(Process::benchmark);
    Problem& problem = problem_for(spec);
    // oneDNN sizes its OpenMP team from this thread's nthreads ICV, when creating the primitive
    // and when executing it.
    omp_set_num_threads(spec.threads);
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(engine);

    using tag = dnnl::memory::format_tag;
    // oneDNN's logical order is always N, C, spatial...; the tag says how it lies in memory. A
    // 3-D tensor goes in as 4-D with H = 1 (the same memory): oneDNN 2.6's JIT kernels take
    // nhwc, while nwc falls back to its generic kernel, 10x slower.
    dnnl::memory::dims dims = tensor_dims(*spec.shape, Layout::channels_first);
    std::size_t rank = dims.size();
    if (rank == 3) {
        dims.insert(dims.begin() + 2, 1);
        rank = 4;
    }
    const std::map<std::string, tag> tags = {
        {"nc", tag::nc},       {"nhwc", tag::nhwc},   {"nchw", tag::nchw},
        {"ndhwc", tag::ndhwc}, {"ncdhw", tag::ncdhw},
    };
    const tag layout_tag = tags.at(layout_name(spec.layout, rank));
    const auto data_type =
        spec.dtype == DType::bf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
    const dnnl::memory::desc data_desc(dims, data_type, layout_tag);
    auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
    if (!spec.training()) {
        flags |= dnnl::normalization_flags::use_global_stats;
    }
    const dnnl::batch_normalization_forward::desc desc(
        spec.training() ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference,
        data_desc, kEpsilon, flags);
    const dnnl::batch_normalization_forward::primitive_desc primitive_desc(desc, engine);
    const dnnl::batch_normalization_forward primitive(primitive_desc);

    const std::int64_t channels = problem.geometry().channels;
    const dnnl::memory::desc parameter_desc({channels}, dnnl::memory::data_type::f32, tag::a);
    std::vector<float> gamma = problem.gamma();
    std::vector<float> beta = problem.beta();
    // Inputs at inference, the batch statistics in training.
    std::vector<float> mean = problem.moving_mean();
    std::vector<float> variance = problem.moving_variance();
    std::vector<float> moving_mean = problem.moving_mean();
    std::vector<float> moving_variance = problem.moving_variance();
    const std::unordered_map<int, dnnl::memory> arguments = {
        {DNNL_ARG_SRC, dnnl::memory(data_desc, engine, problem.x())},
        {DNNL_ARG_DST, dnnl::memory(data_desc, engine, problem.y())},
        {DNNL_ARG_SCALE, dnnl::memory(parameter_desc, engine, gamma.data())},
        {DNNL_ARG_SHIFT, dnnl::memory(parameter_desc, engine, beta.data())},
        {DNNL_ARG_MEAN, dnnl::memory(parameter_desc, engine, mean.data())},
        {DNNL_ARG_VARIANCE, dnnl::memory(parameter_desc, engine, variance.data())},
    };
    const std::int64_t count = problem.geometry().elements() / channels;
    const auto call = [&] {
        primitive.execute(stream, arguments);
        stream.wait();
        if (spec.training()) {
            update_moving(moving_mean, moving_variance, mean, variance, count);
        }
    };
    call();
    if (!check_once(state, problem, spec, Peer::onednn, problem.y(), spec.dtype)) {
        return;
    }
    for (auto _ : state) {
        call();
    }
    state.SetLabel(primitive_desc.impl_info_str());
    report_rates(state, problem, spec.mode);
}

void run_naive(benchmark::State& state, const Case& spec) {
    hand_over_to(Process::benchmark);
    Problem& problem = problem_for(spec);
    std::vector<float> moving_mean = problem.moving_mean();
    std::vector<float> moving_variance = problem.moving_variance();
    const ChannelGeometry& geometry = problem.geometry();
    const NaiveBatchNormalization naive{
        .x = problem.x(),
        .y = problem.y(),
        .bf16 = spec.dtype == DType::bf16,
        .outer = geometry.outer,
        .channels = geometry.channels,
        .inner = geometry.inner,
        .gamma = problem.gamma().data(),
        .beta = problem.beta().data(),
        .moving_mean = moving_mean.data(),
        .moving_variance = moving_variance.data(),
        .epsilon = kEpsilon,
        .momentum = kMomentum,
        .training = spec.training(),
        .threads = spec.threads,
    };
    run_naive_batch_normalization(naive);
    if (!check_once(state, problem, spec, Peer::naive, problem.y(), spec.dtype)) {
        return;
    }
    for (auto _ : state) {
        run_naive_batch_normalization(naive);
        benchmark::ClobberMemory();
    }
    state.SetLabel("loop");
    report_rates(state, problem, spec.mode);
}

// The PyTorch peer process (batch_normalization_torch_peer.py), started by the first PyTorch
// benchmark that runs and kept for the rest of the run.
class TorchPeer {
  public:
    static TorchPeer& instance() {
        static TorchPeer peer;
        return peer;
    }

    // Empty when PyTorch answers; otherwise why it cannot.
    const std::string& unavailable() const { return unavailable_; }
    const std::string& version() const { return version_; }

    nlohmann::json exchange(const nlohmann::json& request) {
        return nlohmann::json::parse(process_->exchange(request.dump()));
    }

  private:
    TorchPeer() {
        const char* python = std::getenv("KEEL_PERF_PYTHON");
        try {
            process_ = std::make_unique<LineProcess>(std::vector<std::string>{
                python != nullptr ? python : KEEL_PERF_PYTHON, KEEL_PERF_TORCH_PEER_SCRIPT});
            const nlohmann::json greeting = nlohmann::json::parse(process_->read_line());
            if (greeting.contains("error")) {
                unavailable_ = greeting["error"].get<std::string>();
            } else {
                version_ = greeting["torch"].get<std::string>();
            }
        } catch (const std::exception& error) {
            unavailable_ = error.what();
        }
        if (!unavailable_.empty()) {
            process_.reset();
        }
    }

    std::unique_ptr<LineProcess> process_;
    std::string unavailable_;
    std::string version_;
};

// PyTorch's output stays in its process; its sum(y) and sum(y^2) are compared with the
// reference's, each within the sum of the per-element tolerances that bound it.
bool check_torch_sums(benchmark::State& state, Problem& problem, const Case& spec,
                      const nlohmann::json& reply) {
    double expected_sum = 0.0;
    double expected_squares = 0.0;
    double sum_bound = 0.0;
    double squares_bound = 0.0;
    for (const double expected : problem.reference(spec.mode)) {
        const double bound = tolerance(expected, spec.dtype);
        expected_sum += expected;
        expected_squares += expected * expected;
        sum_bound += bound;
        squares_bound += (2.0 * std::abs(expected) + bound) * bound;
    }
    const double sum = reply["sum"].get<double>();
    const double squares = reply["sum_squares"].get<double>();
    if (!(std::abs(sum - expected_sum) <= sum_bound &&
          std::abs(squares - expected_squares) <= squares_bound)) {
        state.SkipWithError(("PyTorch output sums " + std::to_string(sum) + ", " +
                             std::to_string(squares) + "; expected " +
                             std::to_string(expected_sum) + ", " + std::to_string(expected_squares))
                                .c_str());
        return false;
    }
    problem.mark_checked(spec.mode, spec.threads, Peer::torch);
    return true;
}

void run_torch(benchmark::State& state, const Case& spec) {
    TorchPeer& peer = TorchPeer::instance();
    if (!peer.unavailable().empty()) {
        state.SkipWithError(("PyTorch peer unavailable: " + peer.unavailable()).c_str());
        return;
    }
    Problem& problem = problem_for(spec);
    const auto iterations = static_cast<std::int64_t>(state.max_iterations);
    const bool check = problem.unchecked(spec.mode, spec.threads, Peer::torch);
    const nlohmann::json request = {
        {"input", problem.raw_input_file().string()},
        {"layout", layout_name(spec.layout, *spec.shape)},
        {"channels_last", spec.layout == Layout::channels_last},
        {"dims", problem.dims()},
        {"dtype", dtype_label(spec.dtype)},
        {"training", spec.training()},
        {"threads", spec.threads},
        {"iterations", iterations},
        {"check", check},
        {"epsilon", kEpsilon},
        {"momentum", kMomentum},
        {"gamma", problem.gamma()},
        {"beta", problem.beta()},
        {"moving_mean", problem.moving_mean()},
        {"moving_variance", problem.moving_variance()},
    };
    hand_over_to(Process::torch);
    const nlohmann::json reply = peer.exchange(request);
    if (reply.contains("error")) {
        state.SkipWithError(("PyTorch: " + reply["error"].get<std::string>()).c_str());
        return;
    }
    if (check && !check_torch_sums(state, problem, spec, reply)) {
        return;
    }
    const double seconds_per_call =
        reply["seconds"].get<double>() / static_cast<double>(iterations);
    for (auto _ : state) {
        state.SetIterationTime(seconds_per_call);
    }
    state.SetLabel("torch " + peer.version());
    report_rates(state, problem, spec.mode);
}

// Whether this CPU's oneDNN has a batch normalization for `dtype` at all: oneDNN 2.6 has bf16
// kernels only with AVX-512 (a machine with AVX2 alone has none, in any layout). Where it has
// none, the oneDNN-direct peer of those cases is left out, not reported as failing.
bool onednn_has_batch_normalization(DType dtype) {
    static const std::map<DType, bool> available = [] {
        std::map<DType, bool> result;
        const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
        for (const DType candidate : {DType::f32, DType::bf16}) {
            const auto data_type = candidate == DType::bf16 ? dnnl::memory::data_type::bf16
                                                            : dnnl::memory::data_type::f32;
            const dnnl::memory::desc data_desc({8, 64, 4, 4}, data_type,
                                               dnnl::memory::format_tag::nhwc);
            try {
                const dnnl::batch_normalization_forward::desc desc(
                    dnnl::prop_kind::forward_inference, data_desc, kEpsilon,
                    dnnl::normalization_flags::use_global_stats);
                const dnnl::batch_normalization_forward::primitive_desc primitive_desc(desc,
                                                                                       engine);
                result[candidate] = true;
            } catch (const dnnl::error&) {
                result[candidate] = false;
            }
        }
        if (!result[DType::bf16]) {
            benchmark::AddCustomContext("onednn_bf16_batch_normalization",
                                        "unavailable on this CPU");
        }
        return result;
    }();
    return available.at(dtype);
}

void run_peer(benchmark::State& state, const Case& spec, Peer peer) {
    try {
        switch (peer) {
            case Peer::keel:
                run_keel(state, spec);
                break;
            case Peer::onednn:
                run_onednn(state, spec);
                break;
            case Peer::naive:
                run_naive(state, spec);
                break;
            case Peer::torch:
                run_torch(state, spec);
                break;
        }
    } catch (const std::exception& error) {
        state.SkipWithError(error.what());
    }
}

}  // namespace

void register_batch_normalization_benchmarks(const BatchNormalizationShape& shape,
                                             std::span<const int> thread_counts, bool with_torch) {
    for (const Layout layout : layouts_of(shape)) {
        for (const DType dtype : {DType::f32, DType::bf16}) {
            std::vector<Mode> modes = {Mode::inference, Mode::training};
            // Custom paths once per shape, where the comparison with fused training is cleanest.
            if (shape.custom_paths && layout == Layout::channels_last && dtype == DType::f32) {
                modes.insert(modes.end(), {Mode::renorm, Mode::virtual_batch, Mode::adjustment,
                                           Mode::multi_axis});
            }
            for (const Mode mode : modes) {
                for (const int threads : thread_counts) {
                    const Case spec{&shape, layout, dtype, mode, threads};
                    for (const Peer peer : {Peer::keel, Peer::onednn, Peer::naive, Peer::torch}) {
                        if ((peer == Peer::torch && !with_torch) ||
                            (peer == Peer::onednn && !onednn_has_batch_normalization(dtype)) ||
                            (peer != Peer::keel && is_custom(mode))) {
                            continue;
                        }
                        const std::string name = "batch_normalization/shape:" + shape_label(shape) +
                                                 "/layout:" + layout_name(layout, shape) +
                                                 "/dtype:" + std::string(dtype_label(dtype)) +
                                                 "/mode:" + std::string(mode_name(mode)) +
                                                 "/threads:" + std::to_string(threads) +
                                                 "/peer:" + std::string(peer_name(peer));
                        benchmark::internal::Benchmark* benchmark = benchmark::RegisterBenchmark(
                            name.c_str(),
                            [spec, peer](benchmark::State& state) { run_peer(state, spec, peer); });
                        benchmark->Unit(benchmark::kMicrosecond);
                        if (peer == Peer::torch) {
                            // PyTorch times its own calls in its process.
                            benchmark->UseManualTime();
                        } else {
                            // Wall time: the peers' worker threads are not this thread.
                            benchmark->UseRealTime();
                        }
                    }
                }
            }
        }
    }
}

}  // namespace keel::perf
