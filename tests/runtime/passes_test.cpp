// Inference rewrites change results only by float rounding, apply exactly where they are valid
// (the classic folding bugs: a conv output read twice, a nonlinearity in between, a conv without
// bias), and follow the variables when training runs change them.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <gtest/gtest.h>

#include <keel/engine/engine.hpp>
#include <keel/engine/error.hpp>
#include <keel/layers/activation/activation.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/convolutional/depthwise_conv2d.hpp>
#include <keel/layers/core/dense.hpp>
#include <keel/layers/merging/add.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/runtime/graph_builder.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/convolutional/convolution.hpp"
#include "layers/core/dense/dense_compute.hpp"
#include "runtime/compiled_model.hpp"

namespace keel {
namespace {

// Values on a grid of 1/8 in [−1, 1], so every product in a convolution is exact in f32 and the
// unfolded conv's sums are exact too (magnitudes stay far below 2^24 / 64).
Tensor grid(const Shape& shape, int seed) {
    Tensor tensor(shape, DType::f32);
    for (std::int64_t i = 0; i < tensor.element_count(); ++i) {
        tensor.data_as<float>()[i] = static_cast<float>(((i * 37 + seed * 11) % 17) - 8) / 8.0f;
    }
    return tensor;
}

// Bounds the folded/unfolded difference. Unfolded: the conv is exact and BatchNormalization
// rounds a few times (≤ 4 ulps of the output, plus scale's own rounding). Folded: each weight
// w·s is rounded (relative 2^-24), then K products and sums round (≤ K·2^-24·Σ|w·s·x|), and the
// folded bias adds one more rounding. With Σ|w·x| ≤ K·max|w|·max|x| = K (grid values ≤ 1):
// |Δ| ≤ (2K + 8)·2^-24·(max|s|·K + max|shift| + max|y|).
double fold_bound(std::int64_t k, double max_scale, double max_shift, double max_y) {
    const double terms = static_cast<double>(k);
    return (2.0 * terms + 8.0) * std::ldexp(1.0, -24) * (max_scale * terms + max_shift + max_y);
}

double max_abs(const Tensor& y) {
    double largest = 0.0;
    for (std::int64_t i = 0; i < y.element_count(); ++i)
        largest = std::max(largest, std::abs(double(y.get(i))));
    return largest;
}

float fold_tolerance(std::int64_t k, double max_scale, double max_shift, const Tensor& y) {
    return static_cast<float>(fold_bound(k, max_scale, max_shift, max_abs(y)));
}

void expect_close(const Tensor& a, const Tensor& b, float tolerance) {
    ASSERT_EQ(a.shape(), b.shape());
    float worst = 0.0f;
    for (std::int64_t i = 0; i < a.element_count(); ++i)
        worst = std::max(worst, std::abs(a.get(i) - b.get(i)));
    EXPECT_LE(worst, tolerance);
}

// Non-trivial statistics: scale s = γ/sqrt(v + ε) in [0.5, 4], shift up to ±3.
void set_statistics(Layer& bn, std::int64_t channels) {
    std::vector<float> gamma, beta, mean, variance;
    for (std::int64_t c = 0; c < channels; ++c) {
        gamma.push_back(0.5f + 0.25f * static_cast<float>(c % 5));
        beta.push_back(0.125f * static_cast<float>(c % 7) - 0.25f);
        mean.push_back(0.25f * static_cast<float>(c % 3) - 0.25f);
        variance.push_back(0.25f + 0.5f * static_cast<float>(c % 4));
    }
    bn.set_variable("gamma", Tensor::from_floats({channels}, gamma));
    bn.set_variable("beta", Tensor::from_floats({channels}, beta));
    bn.set_variable("moving_mean", Tensor::from_floats({channels}, mean));
    bn.set_variable("moving_variance", Tensor::from_floats({channels}, variance));
}
constexpr double kMaxScale = 4.0;
constexpr double kMaxShift = 3.0;

std::shared_ptr<Conv2D> conv(const std::string& name, std::int64_t filters, bool use_bias,
                             const std::string& data_format = "channels_last",
                             nlohmann::json activation = nullptr) {
    Conv2DOptions options;
    options.name = name;
    options.filters = filters;
    options.kernel_size = {3, 3};
    options.padding = "same";
    options.use_bias = use_bias;
    options.data_format = data_format;
    options.activation = std::move(activation);
    options.kernel_initializer = {{"class_name", "Constant"}, {"config", {{"value", 0.125}}}};
    auto layer = std::make_shared<Conv2D>(options);
    return layer;
}

std::shared_ptr<BatchNormalization> bn(const std::string& name, int axis = -1) {
    BatchNormalizationOptions options;
    options.name = name;
    options.axis = axis;
    return std::make_shared<BatchNormalization>(options);
}

std::shared_ptr<ReLU> relu(const std::string& name) {
    ReLUOptions options;
    options.name = name;
    return std::make_shared<ReLU>(options);
}

struct Compiled {
    Model optimized;
    Model plain;
};

Compiled compile_both(GraphBuilder& graph, const SymbolicTensor& x, const SymbolicTensor& y) {
    return {graph.compile({x}, {y}), graph.compile({x}, {y}, CompileOptions{.optimize = false})};
}

TEST(Passes, ConvBatchNormalizationReluFoldsAndFusesWithinRounding) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({9, 7, 5}, "x");
    auto c = conv("conv1", 6, /*use_bias=*/false);
    auto b = bn("bn1");
    const SymbolicTensor y = graph.apply(relu("relu1"), {graph.apply(b, {graph.apply(c, {x})})});
    const Compiled models = compile_both(graph, x, y);
    c->set_variable("kernel", grid({3, 3, 5, 6}, 1));
    set_statistics(*b, 6);

    EXPECT_EQ(models.optimized.passes(),
              (std::vector<std::string>{"fold_batch_normalization:conv1+bn1",
                                        "fuse_activation:conv1+relu1"}));
    EXPECT_TRUE(models.plain.passes().empty());
    const Tensor input = grid({2, 9, 7, 5}, 2);
    const Tensor expected = models.plain.run({input})[0];
    expect_close(models.optimized.run({input})[0], expected,
                 fold_tolerance(3 * 3 * 5, kMaxScale, kMaxShift, expected));
}

TEST(Passes, ChannelsFirstConvWithBiasFoldsIntoAxisOne) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({4, 8, 8}, "x");
    auto c = conv("conv_nchw", 3, /*use_bias=*/true, "channels_first");
    auto b = bn("bn_nchw", 1);
    const SymbolicTensor y = graph.apply(b, {graph.apply(c, {x})});
    const Compiled models = compile_both(graph, x, y);
    c->set_variable("kernel", grid({3, 3, 4, 3}, 3));
    c->set_variable("bias", Tensor::from_floats({3}, std::vector<float>{0.5f, -1.0f, 0.25f}));
    set_statistics(*b, 3);
    EXPECT_EQ(models.optimized.passes(),
              std::vector<std::string>{"fold_batch_normalization:conv_nchw+bn_nchw"});
    const Tensor input = grid({1, 4, 8, 8}, 4);
    const Tensor expected = models.plain.run({input})[0];
    expect_close(models.optimized.run({input})[0], expected,
                 fold_tolerance(3 * 3 * 4 + 1, kMaxScale, kMaxShift, expected));
}

// DepthwiseConv2D's output channel c·multiplier + m and Dense's output column each get their own
// scale: a wrong mapping would be off by whole units, far beyond the tolerance.
TEST(Passes, DenseAndDepthwiseFoldPerOutputChannel) {
    {
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({5, 5, 3}, "x");
        DepthwiseConv2DOptions options;
        options.name = "depthwise";
        options.kernel_size = {3, 3};
        options.depth_multiplier = 2;
        auto depthwise = std::make_shared<DepthwiseConv2D>(options);
        auto b = bn("bn_depthwise");
        const SymbolicTensor y = graph.apply(b, {graph.apply(depthwise, {x})});
        const Compiled models = compile_both(graph, x, y);
        depthwise->set_variable("depthwise_kernel", grid({3, 3, 3, 2}, 5));
        set_statistics(*b, 6);
        EXPECT_EQ(models.optimized.passes(),
                  std::vector<std::string>{"fold_batch_normalization:depthwise+bn_depthwise"});
        const Tensor input = grid({2, 5, 5, 3}, 7);
        const Tensor expected = models.plain.run({input})[0];
        expect_close(models.optimized.run({input})[0], expected,
                     fold_tolerance(3 * 3 + 1, kMaxScale, kMaxShift, expected));
    }
    {
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({7}, "x");
        DenseOptions options;
        options.units = 4;
        options.name = "dense";
        auto dense = std::make_shared<Dense>(options);
        auto b = bn("bn_dense");
        const SymbolicTensor y = graph.apply(b, {graph.apply(dense, {x})});
        const Compiled models = compile_both(graph, x, y);
        dense->set_variable("kernel", grid({7, 4}, 6));
        set_statistics(*b, 4);
        EXPECT_EQ(models.optimized.passes(),
                  std::vector<std::string>{"fold_batch_normalization:dense+bn_dense"});
        const Tensor input = grid({3, 7}, 8);
        const Tensor expected = models.plain.run({input})[0];
        expect_close(models.optimized.run({input})[0], expected,
                     fold_tolerance(7 + 1, kMaxScale, kMaxShift, expected));
    }
}

// The folding bugs other engines had: each of these must stay unfolded.
TEST(Passes, NoFoldAcrossASecondConsumerANonlinearityOrAnActivation) {
    {
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor conv_out = graph.apply(conv("shared_out", 2, true), {x});
        AddOptions add;
        add.name = "add";
        const SymbolicTensor y = graph.apply(std::make_shared<Add>(add),
                                             {graph.apply(bn("bn_shared"), {conv_out}), conv_out});
        EXPECT_TRUE(graph.compile({x}, {y}).passes().empty());
    }
    {
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor y = graph.apply(
            bn("bn_after_relu"),
            {graph.apply(relu("between"), {graph.apply(conv("conv_relu", 2, true), {x})})});
        const Model model = graph.compile({x}, {y});
        EXPECT_EQ(model.passes(), std::vector<std::string>{"fuse_activation:conv_relu+between"});
    }
    {
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor y =
            graph.apply(bn("bn_after_activation"),
                        {graph.apply(conv("conv_act", 2, true, "channels_last", "tanh"), {x})});
        EXPECT_TRUE(graph.compile({x}, {y}).passes().empty());
    }
    {
        GraphBuilder graph;  // a conv output that is also a model output
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor conv_out = graph.apply(conv("conv_output", 2, true), {x});
        const SymbolicTensor y = graph.apply(bn("bn_output"), {conv_out});
        EXPECT_TRUE(graph.compile({x}, {y, conv_out}).passes().empty());
    }
}

// A BatchNormalization that cannot be folded (no conv before it) still takes its ReLU into its
// own pass; clamping a value rounds nothing, so every value is identical and NaN stays NaN.
TEST(Passes, BatchNormalizationReluFusesWithIdenticalValues) {
    for (const int axis : {-1, 1}) {
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({5, 6, 7}, "x");
        auto b = bn("bn_relu_" + std::to_string(axis + 1), axis);
        const SymbolicTensor y =
            graph.apply(relu("relu_" + std::to_string(axis + 1)), {graph.apply(b, {x})});
        const Compiled models = compile_both(graph, x, y);
        set_statistics(*b, axis == 1 ? 5 : 7);
        ASSERT_EQ(models.optimized.passes().size(), 1U);
        EXPECT_EQ(models.optimized.passes()[0].rfind("fuse_batch_normalization_relu:", 0), 0U);
        Tensor input = grid({3, 5, 6, 7}, 11);
        input.data_as<float>()[17] = std::numeric_limits<float>::quiet_NaN();
        const Tensor expected = models.plain.run({input})[0];
        const Tensor fused = models.optimized.run({input})[0];
        ASSERT_EQ(fused.shape(), expected.shape());
        EXPECT_TRUE(std::isnan(fused.get(17)));
        for (std::int64_t i = 0; i < fused.element_count(); ++i) {
            if (i != 17) {
                EXPECT_EQ(fused.get(i), expected.get(i)) << i;
            }
        }
    }
}

// Training runs never use folded weights, and the next inference run folds the new statistics.
TEST(Passes, InferenceAfterTrainingUsesTheUpdatedStatistics) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({6, 6, 4}, "x");
    auto c = conv("conv_train", 4, true);
    auto b = bn("bn_train");
    const SymbolicTensor y = graph.apply(b, {graph.apply(c, {x})});
    const Compiled models = compile_both(graph, x, y);
    c->set_variable("kernel", grid({3, 3, 4, 4}, 8));
    set_statistics(*b, 4);
    const Tensor input = grid({2, 6, 6, 4}, 9);
    const Tensor before = models.optimized.run({input})[0];

    models.optimized.run({grid({3, 6, 6, 4}, 10)}, {.training = true});
    const Tensor expected = models.plain.run({input})[0];  // same layers: sees the update
    const Tensor after = models.optimized.run({input})[0];
    expect_close(after, expected,
                 fold_tolerance(3 * 3 * 4 + 1, kMaxScale * 4.0, kMaxShift * 4.0, expected));
    bool changed = false;
    for (std::int64_t i = 0; i < after.element_count(); ++i)
        changed |= after.get(i) != before.get(i);
    EXPECT_TRUE(changed);
}

std::shared_ptr<Add> add(const std::string& name) {
    AddOptions options;
    options.name = name;
    return std::make_shared<Add>(options);
}

bool bit_identical(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && a.dtype() == b.dtype() &&
           std::memcmp(a.data(), b.data(), a.byte_size()) == 0;
}

// Equal element by element, where −0 equals +0: oneDNN's ReLU post-op computes 0·x below zero on
// some implementations (gemm:jit for NCHW), which is −0 for negative x, where keel's ReLU layer
// gives +0 (as tf.nn.relu does). No value differs.
bool equal_values(const Tensor& a, const Tensor& b) {
    if (a.shape() != b.shape()) return false;
    for (std::int64_t i = 0; i < a.element_count(); ++i) {
        if (a.get(i) != b.get(i)) return false;
    }
    return true;
}

bool has_pass_starting_with(const Model& model, const std::string& prefix) {
    return std::any_of(model.passes().begin(), model.passes().end(),
                       [&](const std::string& pass) { return pass.rfind(prefix, 0) == 0; });
}

// The kernel the fused node runs, on both of its paths (oneDNN's sum post-op, and keel's loops
// with a separate sum), against convolve() followed by the sum and the activation: exact grid
// sums make them agree exactly, for NHWC and NCHW, dense and depthwise-shaped problems.
TEST(Passes, ConvolveAndSumEqualsConvolveThenAdd) {
    using convolutional::ConvolutionPath;
    using convolutional::DataFormat;
    const activation::ActivationFunction linear;
    const activation::ActivationFunction relu_function{
        .kind = activation::ActivationFunction::Kind::relu};
    for (const DataFormat format : {DataFormat::channels_last, DataFormat::channels_first}) {
        for (const std::int64_t groups : {1, 4}) {
            const bool last = format == DataFormat::channels_last;
            const Shape input_shape = last ? Shape{2, 7, 6, 4} : Shape{2, 4, 7, 6};
            const convolutional::ConvolutionProblem problem =
                convolutional::make_problem(format, input_shape, 4, groups, {3, 1, 1}, {3, 1, 1},
                                            convolutional::Padding::same, true);
            const Tensor input = grid(input_shape, 30);
            const Tensor kernel = grid(problem.kernel_shape(), 31);
            const Tensor bias = grid({4}, 32);
            const Tensor addend = grid(problem.output_shape(), 33);
            for (const activation::ActivationFunction* function : {&linear, &relu_function}) {
                Tensor expected = convolutional::convolve(default_engine(), problem, input,
                                                          kernel.data_as<float>(),
                                                          bias.data_as<float>(), linear, "test");
                for (std::int64_t i = 0; i < expected.element_count(); ++i) {
                    expected.data_as<float>()[i] += addend.data_as<float>()[i];
                }
                function->apply_in_place(default_engine(), expected);
                for (const ConvolutionPath path :
                     {ConvolutionPath::automatic, ConvolutionPath::loops}) {
                    Tensor sum = addend.clone();
                    convolutional::ConvolutionReport report;
                    convolutional::convolve_and_sum(default_engine(), problem, input,
                                                    kernel.data_as<float>(), bias.data_as<float>(),
                                                    *function, sum, "test", path, &report);
                    const std::string label = std::string(data_format_name(format)) + " groups " +
                                              std::to_string(groups) + " " + report.implementation;
                    EXPECT_TRUE(equal_values(sum, expected)) << label;
                    EXPECT_EQ(report.sum_fused, path == ConvolutionPath::automatic &&
                                                    report.implementation != "keel:direct_loops")
                        << label;
                }
            }
        }
    }
}

// A ResNet block's tail with the BatchNormalization folded: conv_b → bn → Add(residual) → ReLU
// becomes one convolution with sum and ReLU post-ops. The residual is produced by another
// convolution (with its own ReLU), so the fused node may write into its buffer.
//
// Bound: both models compute the residual r exactly the same way (same layer, grid values, exact
// sums). The folded convolution differs from conv+bn by fold_bound (its input x is on the grid,
// |x| ≤ 1), with |bn output| ≤ max|s|·K + max|shift|. Each model then rounds c + r once (≤ 2^-24
// of |c + r| each, |r| ≤ K), and ReLU is 1-Lipschitz and rounds nothing.
TEST(Passes, ResidualAddFusesIntoTheFoldedConvolutionWithinRounding) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({7, 6, 3}, "x");
    auto residual_conv = conv("conv_a", 4, true, "channels_last", "relu");
    auto c = conv("conv_b", 4, /*use_bias=*/false);
    auto b = bn("bn_b");
    const SymbolicTensor r = graph.apply(residual_conv, {x});
    const SymbolicTensor y =
        graph.apply(relu("relu_out"),
                    {graph.apply(add("add_res"), {graph.apply(b, {graph.apply(c, {x})}), r})});
    const Compiled models = compile_both(graph, x, y);
    residual_conv->set_variable("kernel", grid({3, 3, 3, 4}, 12));
    residual_conv->set_variable("bias", grid({4}, 13));
    c->set_variable("kernel", grid({3, 3, 3, 4}, 14));
    set_statistics(*b, 4);

    EXPECT_EQ(models.optimized.passes(),
              (std::vector<std::string>{"fold_batch_normalization:conv_b+bn_b",
                                        "fuse_residual_add:conv_b+add_res+relu_out"}));
    const Tensor input = grid({2, 7, 6, 3}, 15);
    const Tensor expected = models.plain.run({input})[0];
    constexpr std::int64_t kTerms = 3 * 3 * 3;
    const double max_bn = kMaxScale * kTerms + kMaxShift;
    const double bound = fold_bound(kTerms, kMaxScale, kMaxShift, max_bn) +
                         2.0 * std::ldexp(1.0, -24) * (max_bn + kTerms + 1.0);
    expect_close(models.optimized.run({input})[0], expected, static_cast<float>(bound));
}

// With grid values every convolution sum is exact (products are multiples of 1/64, sums far below
// 2^24/64), so conv + residual rounds the same exact numbers in both models: the fused result
// must equal the unfused one bit for bit, for Conv2D and DepthwiseConv2D, NHWC and NCHW.
TEST(Passes, ResidualAddOfAnExactConvolutionIsBitIdentical) {
    for (const std::string data_format : {"channels_last", "channels_first"}) {
        GraphBuilder graph;
        const bool last = data_format == "channels_last";
        const SymbolicTensor x = graph.input(last ? Shape{6, 5, 3} : Shape{3, 6, 5}, "x");
        auto residual_conv = conv("exact_a_" + data_format, 3, true, data_format, "relu");
        auto c = conv("exact_b_" + data_format, 3, true, data_format);
        const SymbolicTensor y =
            graph.apply(relu("exact_relu_" + data_format),
                        {graph.apply(add("exact_add_" + data_format),
                                     {graph.apply(residual_conv, {x}), graph.apply(c, {x})})});
        const Compiled models = compile_both(graph, x, y);
        residual_conv->set_variable("kernel", grid({3, 3, 3, 3}, 16));
        c->set_variable("kernel", grid({3, 3, 3, 3}, 17));
        c->set_variable("bias", grid({3}, 18));
        // The Add's second input is the bare convolution: it is fused, the first is the residual.
        EXPECT_EQ(
            models.optimized.passes(),
            std::vector<std::string>{"fuse_residual_add:exact_b_" + data_format + "+exact_add_" +
                                     data_format + "+exact_relu_" + data_format});
        const Tensor input = grid(last ? Shape{2, 6, 5, 3} : Shape{2, 3, 6, 5}, 19);
        EXPECT_TRUE(equal_values(models.optimized.run({input})[0], models.plain.run({input})[0]))
            << data_format;
    }
    {
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({5, 5, 3}, "x");
        DepthwiseConv2DOptions options;
        options.name = "depthwise_sum";
        options.kernel_size = {3, 3};
        options.padding = "same";
        options.depth_multiplier = 2;
        auto depthwise = std::make_shared<DepthwiseConv2D>(options);
        const SymbolicTensor r = graph.apply(conv("depthwise_residual", 6, true), {x});
        const SymbolicTensor y =
            graph.apply(std::make_shared<Activation>(
                            ActivationOptions{.activation = "relu", .name = "depthwise_act"}),
                        {graph.apply(add("depthwise_add"), {graph.apply(depthwise, {x}), r})});
        const Compiled models = compile_both(graph, x, y);
        depthwise->set_variable("depthwise_kernel", grid({3, 3, 3, 2}, 20));
        EXPECT_EQ(models.optimized.passes(),
                  std::vector<std::string>{
                      "fuse_residual_add:depthwise_sum+depthwise_add+depthwise_act"});
        const Tensor input = grid({3, 5, 5, 3}, 21);
        EXPECT_TRUE(equal_values(models.optimized.run({input})[0], models.plain.run({input})[0]));
    }
}

std::shared_ptr<Dense> dense(const std::string& name, std::int64_t units, bool use_bias = true,
                             nlohmann::json activation = nullptr) {
    DenseOptions options;
    options.name = name;
    options.units = units;
    options.use_bias = use_bias;
    options.activation = std::move(activation);
    return std::make_shared<Dense>(options);
}

// compute_dense with an addend equals compute_dense then an f32 add, bit for bit: grid values make
// every product and sum exact, so both round only the final c + addend (and ReLU rounds nothing).
// in = 0 takes keel's loop (nothing to multiply: the result is the bias), every other size the
// matmul with sum and eltwise post-ops.
TEST(Passes, DenseAndSumEqualsDenseThenAdd) {
    const activation::ActivationFunction linear;
    const activation::ActivationFunction relu_function{
        .kind = activation::ActivationFunction::Kind::relu};
    for (const std::int64_t in : {0, 9}) {
        for (const activation::ActivationFunction* function : {&linear, &relu_function}) {
            const dense::DenseLayerSpec spec{in, 5, true, *function};
            const Tensor x = grid({2, 3, in}, 40);
            const Tensor kernel = grid({in, 5}, 41);
            const Tensor bias = grid({5}, 42);
            const Tensor addend = grid({2, 3, 5}, 43);
            dense::DenseLayerSpec linear_spec = spec;
            linear_spec.activation = linear;
            Tensor expected = Tensor::uninitialized({2, 3, 5}, DType::f32);
            dense::compute_dense(default_engine(), "test", linear_spec, x, kernel.data_as<float>(),
                                 bias.data_as<float>(), expected, dense::Destination::overwrite);
            for (std::int64_t i = 0; i < expected.element_count(); ++i) {
                expected.data_as<float>()[i] += addend.data_as<float>()[i];
            }
            function->apply_in_place(default_engine(), expected);

            Tensor sum = addend.clone();
            const std::string implementation =
                dense::compute_dense(default_engine(), "test", spec, x, kernel.data_as<float>(),
                                     bias.data_as<float>(), sum, dense::Destination::accumulate);
            const std::string label = "in " + std::to_string(in) + " " + implementation;
            EXPECT_TRUE(equal_values(sum, expected)) << label;
            EXPECT_EQ(implementation.find("onednn:") == 0, in > 0) << label;
            EXPECT_NE(implementation.find("sum"), std::string::npos) << label;
        }
    }
}

// A transformer-style residual: Dense → Add(x) → ReLU on a [batch, tokens, features] input, and
// Dense → BatchNormalization → Add → Activation with the normalization folded first. With grid
// values the unfolded Dense is exact, so fusing alone changes nothing; the folded case is bounded
// as in ResidualAddFusesIntoTheFoldedConvolutionWithinRounding, with K = 8 terms.
TEST(Passes, ResidualAddFusesIntoDense) {
    {
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({3, 8}, "x");
        auto d = dense("dense_res", 8);
        const SymbolicTensor y = graph.apply(
            relu("dense_res_relu"), {graph.apply(add("dense_res_add"), {x, graph.apply(d, {x})})});
        const Compiled models = compile_both(graph, x, y);
        d->set_variable("kernel", grid({8, 8}, 44));
        d->set_variable("bias", grid({8}, 45));
        EXPECT_EQ(
            models.optimized.passes(),
            std::vector<std::string>{"fuse_residual_add:dense_res+dense_res_add+dense_res_relu"});
        const Tensor input = grid({2, 3, 8}, 46);
        EXPECT_TRUE(bit_identical(models.optimized.run({input})[0], models.plain.run({input})[0]));
    }
    {
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({8}, "x");
        const SymbolicTensor r = graph.apply(dense("dense_shortcut", 4, true, "relu"), {x});
        auto d = dense("dense_folded", 4, /*use_bias=*/false);
        auto b = bn("bn_dense_folded");
        const SymbolicTensor y = graph.apply(
            std::make_shared<Activation>(
                ActivationOptions{.activation = "relu", .name = "dense_folded_act"}),
            {graph.apply(add("dense_folded_add"), {graph.apply(b, {graph.apply(d, {x})}), r})});
        const Compiled models = compile_both(graph, x, y);
        d->set_variable("kernel", grid({8, 4}, 47));
        set_statistics(*b, 4);
        EXPECT_EQ(models.optimized.passes(),
                  (std::vector<std::string>{
                      "fold_batch_normalization:dense_folded+bn_dense_folded",
                      "fuse_residual_add:dense_folded+dense_folded_add+dense_folded_act"}));
        const Tensor input = grid({5, 8}, 48);
        const Tensor expected = models.plain.run({input})[0];
        constexpr std::int64_t kTerms = 8;
        const double max_bn = kMaxScale * kTerms + kMaxShift;
        const double bound = fold_bound(kTerms, kMaxScale, kMaxShift, max_bn) +
                             2.0 * std::ldexp(1.0, -24) * (max_bn + kTerms + 1.0);
        expect_close(models.optimized.run({input})[0], expected, static_cast<float>(bound));
    }
    {
        GraphBuilder graph;  // a Dense with its own nonlinearity stays unfused
        const SymbolicTensor x = graph.input({4}, "x");
        const SymbolicTensor y = graph.apply(
            add("dense_tanh_add"), {graph.apply(dense("dense_tanh", 4, true, "tanh"), {x}), x});
        EXPECT_TRUE(graph.compile({x}, {y}).passes().empty());
    }
}

// Each of these must stay unfused: the convolution's output read twice or returned, an activation
// between the convolution and the Add, an Add of three inputs or of shapes that may differ.
TEST(Passes, NoResidualFusionWhereItWouldChangeWhatSomeoneSees) {
    {
        GraphBuilder graph;  // the convolution's output has a second reader
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor c = graph.apply(conv("twice_read", 2, true), {x});
        const SymbolicTensor y =
            graph.apply(add("twice_add"), {graph.apply(add("other_add"), {c, x}), c});
        EXPECT_TRUE(graph.compile({x}, {y}).passes().empty());
    }
    {
        GraphBuilder graph;  // the convolution's output is also a model output
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor c = graph.apply(conv("returned", 2, true), {x});
        const SymbolicTensor y = graph.apply(add("returned_add"), {c, x});
        EXPECT_TRUE(graph.compile({x}, {y, c}).passes().empty());
    }
    {
        GraphBuilder graph;  // a ReLU between the convolution and the Add: fused into the conv only
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor c =
            graph.apply(relu("relu_before"), {graph.apply(conv("conv_relu_add", 2, true), {x})});
        const SymbolicTensor y = graph.apply(add("add_after_relu"), {c, x});
        EXPECT_EQ(graph.compile({x}, {y}).passes(),
                  std::vector<std::string>{"fuse_activation:conv_relu_add+relu_before"});
    }
    {
        GraphBuilder graph;  // a convolution with its own nonlinearity
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor y =
            graph.apply(add("add_tanh"),
                        {graph.apply(conv("conv_tanh", 2, true, "channels_last", "tanh"), {x}), x});
        EXPECT_TRUE(graph.compile({x}, {y}).passes().empty());
    }
    {
        GraphBuilder graph;  // three inputs
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor y =
            graph.apply(add("add3"), {graph.apply(conv("conv_add3", 2, true), {x}), x, x});
        EXPECT_TRUE(graph.compile({x}, {y}).passes().empty());
    }
    {
        GraphBuilder graph;  // a batch known on one side only: the shapes may differ at run time
        const SymbolicTensor x = graph.input({6, 6, 2}, "x");
        const SymbolicTensor fixed = graph.input({6, 6, 2}, "fixed", 2);
        const SymbolicTensor y = graph.apply(
            add("add_fixed"), {graph.apply(conv("conv_open_batch", 2, true), {x}), fixed});
        const Model model = graph.compile({x, fixed}, {y});
        EXPECT_TRUE(model.passes().empty());
        EXPECT_THROW(model.run({grid({3, 6, 6, 2}, 1), grid({2, 6, 6, 2}, 2)}), Error);
    }
}

// Shapes equal as compiled (both batches unknown) but not at run time: the fused node refuses them
// as the Add would, naming the Add.
TEST(Passes, TheFusedNodeRejectsAResidualOfAnotherShapeLikeTheAdd) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({6, 6, 2}, "x");
    const SymbolicTensor shortcut = graph.input({6, 6, 2}, "shortcut");
    const SymbolicTensor y =
        graph.apply(add("add_runtime_shapes"),
                    {graph.apply(conv("conv_runtime_shapes", 2, true), {x}), shortcut});
    const Model model = graph.compile({x, shortcut}, {y});
    ASSERT_TRUE(has_pass_starting_with(model, "fuse_residual_add:"));
    try {
        model.run({grid({3, 6, 6, 2}, 1), grid({2, 6, 6, 2}, 2)});
        ADD_FAILURE() << "no error";
    } catch (const Error& error) {
        const std::string message = error.what();
        EXPECT_NE(message.find("Add 'add_runtime_shapes'"), std::string::npos) << message;
        EXPECT_NE(message.find("[2, 6, 6, 2]"), std::string::npos) << message;
    }
}

// An activation that others also read (or that is returned) stays a node of its own; the
// convolution and the Add still fuse.
TEST(Passes, ResidualFusionLeavesASharedActivationAlone) {
    for (const bool returned : {true, false}) {
        const std::string suffix = returned ? "_returned" : "_read_twice";
        GraphBuilder graph;
        const SymbolicTensor x = graph.input({6, 5, 2}, "x");
        auto c = conv("conv_shared" + suffix, 2, true);
        const SymbolicTensor sum = graph.apply(add("sum" + suffix), {graph.apply(c, {x}), x});
        const SymbolicTensor y = graph.apply(relu("relu" + suffix), {sum});
        // The sum is returned too, or read by a second Add.
        const std::vector<SymbolicTensor> outputs =
            returned ? std::vector<SymbolicTensor>{y, sum}
                     : std::vector<SymbolicTensor>{graph.apply(add("again" + suffix), {y, sum})};
        const Compiled models{graph.compile({x}, outputs),
                              graph.compile({x}, outputs, CompileOptions{.optimize = false})};
        c->set_variable("kernel", grid({3, 3, 2, 2}, 22));
        EXPECT_EQ(
            models.optimized.passes(),
            std::vector<std::string>{"fuse_residual_add:conv_shared" + suffix + "+sum" + suffix});
        const Tensor input = grid({2, 6, 5, 2}, 23);
        const std::vector<Tensor> fused = models.optimized.run({input});
        const std::vector<Tensor> plain = models.plain.run({input});
        ASSERT_EQ(fused.size(), outputs.size());
        for (std::size_t i = 0; i < fused.size(); ++i) {
            EXPECT_TRUE(bit_identical(fused[i], plain[i])) << suffix << " output " << i;
        }
    }
}

// The fused node reads the residual, so it must come after the residual's producer even when
// that producer was applied after the convolution; it takes the last fused node's place.
TEST(Passes, ResidualFusionKeepsTheGraphInTopologicalOrder) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({5, 5, 2}, "x");
    auto first = conv("applied_first", 2, true);
    auto later = conv("applied_later", 2, true, "channels_last", "relu");
    const SymbolicTensor c = graph.apply(first, {x});
    const SymbolicTensor r = graph.apply(later, {x});
    const SymbolicTensor y = graph.apply(relu("late_relu"), {graph.apply(add("late_add"), {c, r})});
    const Compiled models = compile_both(graph, x, y);
    first->set_variable("kernel", grid({3, 3, 2, 2}, 24));
    later->set_variable("kernel", grid({3, 3, 2, 2}, 25));
    EXPECT_EQ(models.optimized.passes(),
              std::vector<std::string>{"fuse_residual_add:applied_first+late_add+late_relu"});

    const runtime::Graph& rewritten =
        runtime::ModelAccess::compiled(models.optimized).inference_plan.graph;
    ASSERT_EQ(rewritten.nodes.size(), 2U);
    for (std::size_t n = 0; n < rewritten.nodes.size(); ++n) {
        for (const int value : rewritten.nodes[n].inputs) {
            EXPECT_LT(rewritten.values[static_cast<std::size_t>(value)].producer,
                      static_cast<int>(n));
        }
        EXPECT_EQ(rewritten.values[static_cast<std::size_t>(rewritten.nodes[n].output)].producer,
                  static_cast<int>(n));
    }
    const Tensor input = grid({2, 5, 5, 2}, 26);
    EXPECT_TRUE(bit_identical(models.optimized.run({input})[0], models.plain.run({input})[0]));
}

// Training runs take the graph as written: batch statistics, no folding, no fusion. Their output
// is the unoptimized model's bit for bit, and the next inference run folds the updated statistics.
TEST(Passes, TrainingRunsNeverUseTheResidualFusion) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({6, 6, 3}, "x");
    auto c = conv("conv_train_sum", 3, true);
    auto b = bn("bn_train_sum");
    const SymbolicTensor y = graph.apply(
        relu("relu_train_sum"),
        {graph.apply(add("add_train_sum"), {graph.apply(b, {graph.apply(c, {x})}), x})});
    const Compiled models = compile_both(graph, x, y);
    c->set_variable("kernel", grid({3, 3, 3, 3}, 27));
    set_statistics(*b, 3);
    ASSERT_TRUE(has_pass_starting_with(models.optimized, "fuse_residual_add:"));

    const Tensor batch = grid({3, 6, 6, 3}, 28);
    const Tensor trained_optimized = models.optimized.run({batch}, {.training = true})[0];
    const Tensor trained_plain = models.plain.run({batch}, {.training = true})[0];
    EXPECT_TRUE(bit_identical(trained_optimized, trained_plain));

    const Tensor input = grid({2, 6, 6, 3}, 29);
    const Tensor expected = models.plain.run({input})[0];
    constexpr std::int64_t kTerms = 3 * 3 * 3 + 1;
    // Two training steps moved the statistics: the scale and shift may have grown (as in
    // InferenceAfterTrainingUsesTheUpdatedStatistics), so their bounds are taken 4x.
    const double max_bn = 4.0 * kMaxScale * kTerms + 4.0 * kMaxShift;
    const double bound = fold_bound(kTerms, 4.0 * kMaxScale, 4.0 * kMaxShift, max_bn) +
                         2.0 * std::ldexp(1.0, -24) * (max_bn + 1.0);
    expect_close(models.optimized.run({input})[0], expected, static_cast<float>(bound));
}

}  // namespace
}  // namespace keel
