// Inference rewrites change results only by float rounding, apply exactly where they are valid
// (the classic folding bugs: a conv output read twice, a nonlinearity in between, a conv without
// bias), and follow the variables when training runs change them.

#include <algorithm>
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include <keel/layers/activation/activation.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/convolutional/depthwise_conv2d.hpp>
#include <keel/layers/core/dense.hpp>
#include <keel/layers/merging/add.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>
#include <keel/runtime/graph_builder.hpp>

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
float fold_tolerance(std::int64_t k, double max_scale, double max_shift, const Tensor& y) {
    double max_y = 0.0;
    for (std::int64_t i = 0; i < y.element_count(); ++i)
        max_y = std::max(max_y, std::abs(double(y.get(i))));
    const double terms = static_cast<double>(k);
    return static_cast<float>((2.0 * terms + 8.0) * std::ldexp(1.0, -24) *
                              (max_scale * terms + max_shift + max_y));
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

}  // namespace
}  // namespace keel
