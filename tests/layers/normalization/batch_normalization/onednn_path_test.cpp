#include "layers/normalization/batch_normalization/onednn_path.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <keel/engine/engine.hpp>
#include <keel/engine/error.hpp>
#include <keel/engine/tensor.hpp>

#include "engine/engine_state.hpp"

namespace keel::batch_normalization {
namespace {

// Unit roundoff of float32 (half an ulp of 1): every correctly rounded f32 operation has a
// relative error of at most this.
constexpr double kUnitRoundoff32 = 0x1p-24;
// The same for bfloat16 (8 significant bits: 2^-8): the relative error of rounding an f32 result
// to bf16.
constexpr double kUnitRoundoffBf16 = 0x1p-8;

Engine engine_with_threads(int threads) {
    ThreadingOptions options;
    options.intra_op_threads = threads;
    return Engine(options);
}

bool onednn_has_isa(dnnl::cpu_isa isa) {
    const auto effective = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
    const auto wanted = static_cast<unsigned>(isa);
    return (effective & wanted) == wanted;
}

bool is_jit_implementation(const std::string& name) {
    return name.starts_with("bnorm_jit") || name.starts_with("bnorm_tbb_jit");
}

OneDnnRequest make_request(std::int64_t outer, std::int64_t channels, DType dtype,
                           bool use_scale = true, bool use_shift = true) {
    OneDnnRequest request;
    request.outer = outer;
    request.channels = channels;
    request.dtype = dtype;
    request.use_scale = use_scale;
    request.use_shift = use_shift;
    request.epsilon = 1e-3f;
    return request;
}

// Per-channel data with distinct centres and spreads (so a channel mix-up shows), from a fixed
// seed; rounded to the data dtype by Tensor::from_floats.
Tensor make_input(std::int64_t outer, std::int64_t channels, DType dtype, std::uint32_t seed) {
    std::mt19937 generator(seed);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    std::vector<float> values(static_cast<std::size_t>(outer * channels));
    for (std::int64_t row = 0; row < outer; ++row) {
        for (std::int64_t c = 0; c < channels; ++c) {
            const float centre = 0.25f * static_cast<float>(c % 13) - 1.5f;
            const float spread = 0.5f + 0.125f * static_cast<float>(c % 5);
            values[static_cast<std::size_t>(row * channels + c)] =
                centre + spread * unit(generator);
        }
    }
    return Tensor::from_floats({outer, channels}, values, dtype);
}

std::vector<float> make_channel_values(std::int64_t channels, float base, float step) {
    std::vector<float> values(static_cast<std::size_t>(channels));
    for (std::int64_t c = 0; c < channels; ++c) {
        values[static_cast<std::size_t>(c)] = base + step * static_cast<float>(c % 7);
    }
    return values;
}

// What oneDNN's f32 arithmetic may deviate from the exact result. Whether oneDNN evaluates
// (x - μ)·(1/σ)·γ + β or x·s + (β - μ·s) with s = γ/σ, at most eight roundings touch quantities
// bounded by T = (|x| + |μ|)·|γ|/σ + |β| (σ = sqrt(var + ε): add, sqrt, divide; then product with
// γ, the products with x and μ, the subtraction and the final add or fma), so |y^ - y| <= 8·u·T.
// A bf16 output adds one rounding of the f32 result: 2^-8·(|y| + f32 error). Second-order terms
// (products of two such errors) stay below 1% of the first-order bound, hence the factor 1.01.
struct Parameters {
    std::vector<float> mean;
    std::vector<float> variance;
    std::vector<float> scale;
    std::vector<float> shift;
};

// Checks y against the exact double result from the statistics the kernel normalized with.
::testing::AssertionResult output_matches(const OneDnnRequest& request, const Tensor& x,
                                          const Tensor& y, const Parameters& parameters) {
    const std::vector<float> xs = x.to_floats();
    const std::vector<float> ys = y.to_floats();
    const std::int64_t channels = request.channels;
    std::int64_t failures = 0;
    std::string first_failure;
    for (std::int64_t row = 0; row < request.outer; ++row) {
        for (std::int64_t c = 0; c < channels; ++c) {
            const std::size_t i = static_cast<std::size_t>(row * channels + c);
            const double gamma = request.use_scale ? parameters.scale[c] : 1.0;
            const double beta = request.use_shift ? parameters.shift[c] : 0.0;
            const double mean = parameters.mean[c];
            const double variance = parameters.variance[c];
            const double sigma = std::sqrt(variance + static_cast<double>(request.epsilon));
            const double exact = (xs[i] - mean) / sigma * gamma + beta;
            const double magnitude =
                (std::fabs(xs[i]) + std::fabs(mean)) * std::fabs(gamma) / sigma + std::fabs(beta);
            double tolerance = 8.0 * kUnitRoundoff32 * magnitude;
            if (request.dtype == DType::bf16) {
                tolerance += kUnitRoundoffBf16 * (std::fabs(exact) + tolerance);
            }
            tolerance *= 1.01;
            if (!(std::fabs(ys[i] - exact) <= tolerance)) {
                if (failures == 0) {
                    first_failure = "row " + std::to_string(row) + " channel " + std::to_string(c) +
                                    ": y = " + std::to_string(ys[i]) + ", exact " +
                                    std::to_string(exact) + ", tolerance " +
                                    std::to_string(tolerance);
                }
                ++failures;
            }
        }
    }
    if (failures == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << failures << " outputs out of tolerance; first at " << first_failure;
}

OneDnnProbe accepted_probe(const Engine& engine, const OneDnnRequest& request) {
    OneDnnProbe probe = probe_onednn(engine, request);
    EXPECT_NE(probe.primitive, nullptr) << "refused: " << probe.refusal;
    return probe;
}

Parameters make_parameters(std::int64_t channels) {
    Parameters parameters;
    parameters.mean = make_channel_values(channels, -0.75f, 0.25f);
    parameters.variance = make_channel_values(channels, 0.5f, 0.375f);
    parameters.scale = make_channel_values(channels, 0.5f, 0.25f);
    parameters.shift = make_channel_values(channels, -1.0f, 0.5f);
    return parameters;
}

void check_inference(const Engine& engine, const OneDnnRequest& request, std::uint32_t seed) {
    const OneDnnProbe probe = accepted_probe(engine, request);
    if (probe.primitive == nullptr) return;
    const Tensor x = make_input(request.outer, request.channels, request.dtype, seed);
    Tensor y({request.outer, request.channels}, request.dtype);
    const Parameters parameters = make_parameters(request.channels);
    run_onednn_inference(engine, *probe.primitive, request, x, parameters.mean.data(),
                         parameters.variance.data(),
                         request.use_scale ? parameters.scale.data() : nullptr,
                         request.use_shift ? parameters.shift.data() : nullptr, y);
    EXPECT_TRUE(output_matches(request, x, y, parameters));
}

TEST(OneDnnPathProbe, AcceptsJitForLargeNhwcFloat32) {
    // The common ResNet case must reach oneDNN's JIT kernels, or keel loses its fast path.
    const Engine engine = engine_with_threads(1);
    const OneDnnProbe probe = probe_onednn(engine, make_request(32 * 56 * 56, 64, DType::f32));
    ASSERT_NE(probe.primitive, nullptr) << probe.refusal;
    EXPECT_TRUE(probe.refusal.empty());
    EXPECT_TRUE(is_jit_implementation(probe.primitive->implementation))
        << probe.primitive->implementation;
    ::testing::Test::RecordProperty("implementation", probe.primitive->implementation);
}

TEST(OneDnnPathProbe, RefusesGenericImplementationWithItsName) {
    // oneDNN 2.6 serves channels-last data with 3 channels (an RGB input) only with its generic
    // nspc_bnorm: keel's own kernel must take that case, told why.
    const Engine engine = engine_with_threads(1);
    OneDnnProbe probe;
    ASSERT_NO_THROW(probe = probe_onednn(engine, make_request(4 * 5 * 5, 3, DType::f32)));
    EXPECT_EQ(probe.primitive, nullptr);
    EXPECT_NE(probe.refusal.find("oneDNN offers only nspc_bnorm:any"), std::string::npos)
        << probe.refusal;
    EXPECT_NE(probe.refusal.find("3 channels"), std::string::npos) << probe.refusal;
}

TEST(OneDnnPathProbe, RefusesWhatOneDnnCannotComputeWithoutThrowing) {
    const Engine engine = engine_with_threads(1);
    const OneDnnProbe half = probe_onednn(engine, make_request(64, 16, DType::f16));
    EXPECT_EQ(half.primitive, nullptr);
    EXPECT_NE(half.refusal.find("float16"), std::string::npos) << half.refusal;

    const OneDnnProbe empty = probe_onednn(engine, make_request(0, 16, DType::f32));
    EXPECT_EQ(empty.primitive, nullptr);
    EXPECT_FALSE(empty.refusal.empty());
}

TEST(OneDnnPathProbe, AcceptsBfloat16WhereOneDnnHasAvx512) {
    // oneDNN 2.6 runs bf16 batch norm in its AVX-512 JIT (native bf16 instructions where the CPU
    // has them, as here, emulated otherwise).
    if (!onednn_has_isa(dnnl::cpu_isa::avx512_core)) {
        GTEST_SKIP() << "oneDNN reports no AVX-512 on this CPU";
    }
    const Engine engine = engine_with_threads(1);
    const OneDnnProbe probe = probe_onednn(engine, make_request(32 * 56 * 56, 64, DType::bf16));
    ASSERT_NE(probe.primitive, nullptr) << probe.refusal;
    EXPECT_TRUE(is_jit_implementation(probe.primitive->implementation));
    ::testing::Test::RecordProperty("bf16_inference", probe.primitive->implementation);
}

TEST(OneDnnPathWithoutBf16, RefusesBfloat16InsteadOfThrowing) {
    // Run by CTest a second time with DNNL_MAX_CPU_ISA=AVX2, where oneDNN has no bf16 batch
    // norm at all: the probe must report a refusal so keel's kernel takes the case.
    if (onednn_has_isa(dnnl::cpu_isa::avx512_core)) {
        GTEST_SKIP() << "oneDNN has bf16 kernels here; see the DNNL_MAX_CPU_ISA=AVX2 run";
    }
    const Engine engine = engine_with_threads(1);
    OneDnnProbe probe;
    ASSERT_NO_THROW(probe = probe_onednn(engine, make_request(1024, 64, DType::bf16)));
    EXPECT_EQ(probe.primitive, nullptr);
    EXPECT_NE(probe.refusal.find("bfloat16"), std::string::npos) << probe.refusal;
}

TEST(OneDnnPathProbe, RejectsMalformedRequests) {
    const Engine engine = engine_with_threads(1);
    OneDnnRequest request = make_request(-1, 16, DType::f32);
    EXPECT_THROW(probe_onednn(engine, request), Error);
    request = make_request(16, -2, DType::f32);
    EXPECT_THROW(probe_onednn(engine, request), Error);
    request = make_request(16, 16, DType::f32);
    request.epsilon = std::numeric_limits<float>::quiet_NaN();
    try {
        probe_onednn(engine, request);
        ADD_FAILURE() << "NaN epsilon accepted";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), ErrorCategory::invalid_argument);
        EXPECT_NE(std::string(error.what()).find("epsilon"), std::string::npos) << error.what();
    }
}

TEST(OneDnnPathCache, SameRequestSharesOnePrimitive) {
    const Engine engine = engine_with_threads(1);
    const OneDnnRequest request = make_request(1024, 64, DType::f32);
    const OneDnnProbe first = probe_onednn(engine, request);
    const std::size_t entries = engine.state().primitives.size();
    const OneDnnProbe second = probe_onednn(engine, request);
    ASSERT_NE(first.primitive, nullptr);
    EXPECT_EQ(first.primitive.get(), second.primitive.get());
    EXPECT_EQ(engine.state().primitives.size(), entries);
}

TEST(OneDnnPathCache, EveryDescriptorFieldSeparatesPrimitives) {
    // A key that forgot a field would hand one case another case's primitive (wrong epsilon baked
    // into the JIT code, a missing scale or shift, ...).
    const Engine engine = engine_with_threads(1);
    const OneDnnRequest base = make_request(1024, 64, DType::f32);
    std::vector<OneDnnRequest> variants(6, base);
    variants[1].outer = 2048;
    variants[2].channels = 128;
    variants[3].use_scale = false;
    variants[4].use_shift = false;
    variants[5].epsilon = std::nextafter(base.epsilon, 1.0f);
    if (onednn_has_isa(dnnl::cpu_isa::avx512_core)) {
        OneDnnRequest bfloat16 = base;
        bfloat16.dtype = DType::bf16;
        variants.push_back(bfloat16);
    }

    std::vector<const CachedPrimitive*> seen;
    for (const OneDnnRequest& request : variants) {
        const std::size_t before = engine.state().primitives.size();
        const OneDnnProbe probe = probe_onednn(engine, request);
        ASSERT_NE(probe.primitive, nullptr) << probe.refusal;
        EXPECT_EQ(engine.state().primitives.size(), before + 1);
        EXPECT_EQ(std::count(seen.begin(), seen.end(), probe.primitive.get()), 0);
        seen.push_back(probe.primitive.get());
    }
}

TEST(OneDnnPathCache, PrimitiveIsCreatedForTheEngineThreadCount) {
    // oneDNN sizes a JIT batch norm's scratchpad per thread of the team it sees at
    // creation; a 2-thread engine must get a primitive created for 2 threads (a 1-thread one
    // would overrun its scratchpad when run by 2).
    const OneDnnRequest request = make_request(1024, 64, DType::f32);
    const Engine one = engine_with_threads(1);
    const Engine two = engine_with_threads(2);
    const OneDnnProbe single = probe_onednn(one, request);
    const OneDnnProbe pair = probe_onednn(two, request);
    ASSERT_NE(single.primitive, nullptr);
    ASSERT_NE(pair.primitive, nullptr);
    EXPECT_NE(single.primitive.get(), pair.primitive.get());
    EXPECT_GT(pair.primitive->scratchpad.get_size(), single.primitive->scratchpad.get_size());
}

struct NumericsCase {
    std::int64_t outer;
    std::int64_t channels;
    DType dtype;
    bool use_scale;
    bool use_shift;
    int threads;
};

std::string case_name(const ::testing::TestParamInfo<NumericsCase>& info) {
    const NumericsCase& c = info.param;
    return std::string(c.dtype == DType::f32 ? "f32" : "bf16") + "_rows" + std::to_string(c.outer) +
           "_c" + std::to_string(c.channels) + (c.use_scale ? "_scale" : "_noscale") +
           (c.use_shift ? "_shift" : "_noshift") + "_t" + std::to_string(c.threads);
}

class OneDnnPathNumerics : public ::testing::TestWithParam<NumericsCase> {};

TEST_P(OneDnnPathNumerics, InferenceMatchesExactFormula) {
    const NumericsCase& c = GetParam();
    if (c.dtype == DType::bf16 && !onednn_has_isa(dnnl::cpu_isa::avx512_core)) {
        GTEST_SKIP() << "no bf16 batch norm in oneDNN on this CPU";
    }
    const Engine engine = engine_with_threads(c.threads);
    check_inference(engine, make_request(c.outer, c.channels, c.dtype, c.use_scale, c.use_shift),
                    17);
}

// Rows: 3 (less than one vector per channel), 70 (two images of 35 rows in the nhwc view), 4096
// (64 images of 64 rows, split between threads), 4099 (prime: 4099 images of one row).
// Channels: 48 and 64 reach bnorm_jit (multiples of 16), 40 reaches bnorm_tbb_jit (f32 only).
INSTANTIATE_TEST_SUITE_P(ScaleShiftFlags, OneDnnPathNumerics,
                         ::testing::Values(NumericsCase{70, 48, DType::f32, true, true, 1},
                                           NumericsCase{70, 48, DType::f32, true, false, 1},
                                           NumericsCase{70, 48, DType::f32, false, true, 1},
                                           NumericsCase{70, 48, DType::f32, false, false, 1},
                                           NumericsCase{70, 48, DType::bf16, true, true, 1},
                                           NumericsCase{70, 48, DType::bf16, true, false, 1},
                                           NumericsCase{70, 48, DType::bf16, false, true, 1},
                                           NumericsCase{70, 48, DType::bf16, false, false, 1}),
                         case_name);

INSTANTIATE_TEST_SUITE_P(Shapes, OneDnnPathNumerics,
                         ::testing::Values(NumericsCase{3, 64, DType::f32, true, true, 1},
                                           NumericsCase{3, 16, DType::bf16, true, true, 1},
                                           NumericsCase{4096, 64, DType::f32, true, true, 2},
                                           NumericsCase{4096, 64, DType::bf16, true, true, 2},
                                           NumericsCase{70, 40, DType::f32, true, true, 1},
                                           NumericsCase{4096, 40, DType::f32, true, true, 2},
                                           NumericsCase{4099, 64, DType::f32, true, true, 2}),
                         case_name);

TEST(OneDnnPathRun, RejectsTensorsThatDoNotMatchTheRequest) {
    const Engine engine = engine_with_threads(1);
    const OneDnnRequest request = make_request(64, 16, DType::f32);
    const OneDnnProbe probe = accepted_probe(engine, request);
    ASSERT_NE(probe.primitive, nullptr);
    const Parameters parameters = make_parameters(request.channels);
    const Tensor good = make_input(64, 16, DType::f32, 3);
    const Tensor wrong_dtype = make_input(64, 16, DType::bf16, 3);
    const Tensor wrong_size = make_input(63, 16, DType::f32, 3);
    Tensor y({64, 16}, DType::f32);
    const auto run = [&](const Tensor& x) {
        run_onednn_inference(engine, *probe.primitive, request, x, parameters.mean.data(),
                             parameters.variance.data(), parameters.scale.data(),
                             parameters.shift.data(), y);
    };
    EXPECT_NO_THROW(run(good));
    EXPECT_THROW(run(wrong_dtype), Error);
    try {
        run(wrong_size);
        ADD_FAILURE() << "a tensor of 63 rows ran as 64";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), ErrorCategory::shape_mismatch);
    }
    EXPECT_THROW(
        run_onednn_inference(engine, *probe.primitive, request, good, parameters.mean.data(),
                             parameters.variance.data(), nullptr, parameters.shift.data(), y),
        Error);
    EXPECT_THROW(run_onednn_inference(engine, CachedPrimitive{}, request, good,
                                      parameters.mean.data(), parameters.variance.data(),
                                      parameters.scale.data(), parameters.shift.data(), y),
                 Error);

    // A primitive made for another request would read and write past the caller's buffers.
    const OneDnnProbe larger = accepted_probe(engine, make_request(128, 16, DType::f32));
    ASSERT_NE(larger.primitive, nullptr);
    EXPECT_THROW(run_onednn_inference(engine, *larger.primitive, request, good,
                                      parameters.mean.data(), parameters.variance.data(),
                                      parameters.scale.data(), parameters.shift.data(), y),
                 Error);
    OneDnnRequest other_epsilon = request;
    other_epsilon.epsilon = 1e-5f;
    EXPECT_THROW(run_onednn_inference(engine, *probe.primitive, other_epsilon, good,
                                      parameters.mean.data(), parameters.variance.data(),
                                      parameters.scale.data(), parameters.shift.data(), y),
                 Error);
}

TEST(OneDnnPathRun, ManyPrimitivesInTurnOnOneThread) {
    // A thread keeps oneDNN memory objects for the last primitives it ran; cycling through more
    // primitives than it keeps, twice, must rebind every one of them correctly.
    const Engine engine = engine_with_threads(1);
    for (int pass = 0; pass < 2; ++pass) {
        for (std::int64_t outer = 40; outer < 64; ++outer) {
            check_inference(engine, make_request(outer, 32, DType::f32), 7);
        }
    }
}

// Debian's oneDNN shares its library scratchpad between threads; keel gives each calling thread
// its own (user mode). Two threads running the same primitive at once on their own buffers must
// each get exactly what a lone run gives.
TEST(OneDnnPathConcurrency, TwoThreadsShareOnePrimitive) {
    const Engine engine = engine_with_threads(2);
    const OneDnnRequest request = make_request(4096, 64, DType::f32);
    const OneDnnProbe probe = accepted_probe(engine, request);
    ASSERT_NE(probe.primitive, nullptr);
    const Parameters parameters = make_parameters(request.channels);

    struct Worker {
        Tensor x;
        Tensor expected;
        int mismatches = 0;
    };
    const auto run = [&](const Tensor& x, Tensor& y) {
        run_onednn_inference(engine, *probe.primitive, request, x, parameters.mean.data(),
                             parameters.variance.data(), parameters.scale.data(),
                             parameters.shift.data(), y);
    };
    std::vector<Worker> workers(2);
    for (std::size_t w = 0; w < workers.size(); ++w) {
        Worker& worker = workers[w];
        worker.x = make_input(request.outer, request.channels, DType::f32,
                              static_cast<std::uint32_t>(100 + w));
        worker.expected = Tensor({request.outer, request.channels}, DType::f32);
        run(worker.x, worker.expected);
    }

    std::atomic<int> finished{0};
    std::vector<std::thread> threads;
    for (Worker& worker : workers) {
        threads.emplace_back([&run, &worker, &request, &finished] {
            Tensor y({request.outer, request.channels}, DType::f32);
            for (int iteration = 0; iteration < 40; ++iteration) {
                try {
                    run(worker.x, y);
                } catch (const Error&) {
                    ++worker.mismatches;
                    continue;
                }
                if (std::memcmp(y.data(), worker.expected.data(), y.byte_size()) != 0) {
                    ++worker.mismatches;
                }
            }
            ++finished;
        });
    }
    // Threads that corrupt each other's state may spin forever; end the test binary with a
    // message then, instead of hanging the suite (the runs take milliseconds).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (finished.load() < static_cast<int>(threads.size())) {
        if (std::chrono::steady_clock::now() > deadline) {
            std::fprintf(stderr, "concurrent oneDNN runs did not finish within 60 s\n");
            std::abort();
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    for (std::thread& thread : threads) thread.join();
    for (const Worker& worker : workers) EXPECT_EQ(worker.mismatches, 0);
}

}  // namespace
}  // namespace keel::batch_normalization
