// BatchNormalization's Keras semantics: argument checks at the right stage, the fused decision,
// variable shapes and updates, the effective training mode, and the promise that a failed call
// changes nothing. Numerics against an independent reference live in tests/golden/.

#include <keel/layers/normalization/batch_normalization.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr float kEps32 = std::numeric_limits<float>::epsilon();

BatchNormalizationOptions with_axis(std::variant<int, std::vector<int>> axis) {
    BatchNormalizationOptions options;
    options.axis = std::move(axis);
    return options;
}

// Runs `action`, expecting a keel::Error of `category` whose message contains `fragment`.
template <typename Action>
void expect_error(Action&& action, ErrorCategory category, const std::string& fragment) {
    try {
        action();
        FAIL() << "expected keel::Error containing '" << fragment << "'";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), category) << error.what();
        EXPECT_THAT(error.what(), HasSubstr(fragment));
    }
}

std::vector<float> values(const Tensor& tensor) { return tensor.to_floats(); }

// x of shape [4, 1, 1, 2] (NHWC): channel 0 holds 1, 3, 5, 7 (mean 4, biased variance 5);
// channel 1 holds −2, −2, 2, 2 (mean 0, biased variance 4). All exactly representable.
Tensor nhwc_input() {
    return Tensor::from_floats({4, 1, 1, 2}, std::vector<float>{1, -2, 3, -2, 5, 2, 7, 2});
}

TEST(BatchNormalizationConstruction, FusedTrueWithRenormIsRejectedByV2ButNotV1) {
    BatchNormalizationOptions options;
    options.fused = true;
    options.renorm = true;
    expect_error([&] { BatchNormalization layer(options); }, ErrorCategory::invalid_argument,
                 "fused = true");
    options.behavior = BatchNormalizationBehavior::v1;
    EXPECT_NO_THROW(BatchNormalization layer(options));
}

TEST(BatchNormalizationConstruction, FusedTrueNeedsAxisOneOrThree) {
    BatchNormalizationOptions options = with_axis(std::vector<int>{1, 3});
    options.fused = true;
    expect_error([&] { BatchNormalization layer(options); }, ErrorCategory::invalid_argument,
                 "axis = [1, 3]");
}

TEST(BatchNormalizationConstruction, RejectsValuesThatOnlyProduceNaN) {
    BatchNormalizationOptions options;
    options.epsilon = std::nan("");
    expect_error([&] { BatchNormalization layer(options); }, ErrorCategory::invalid_argument,
                 "epsilon = nan");
    options.epsilon = -1e-3;
    expect_error([&] { BatchNormalization layer(options); }, ErrorCategory::invalid_argument,
                 "epsilon = -0.001");
    options.epsilon = 1e-3;
    options.momentum = 1.5;
    expect_error([&] { BatchNormalization layer(options); }, ErrorCategory::invalid_argument,
                 "momentum = 1.5; expected a value in [0, 1]");
}

TEST(BatchNormalizationConstruction, RenormClippingKeysAndBounds) {
    BatchNormalizationOptions options;
    options.renorm = true;
    options.renorm_clipping = {{"rmax", 2.0}, {"rmean", 1.0}};
    expect_error([&] { BatchNormalization layer(options); }, ErrorCategory::invalid_argument,
                 "'rmean'");
    options.renorm_clipping = {{"rmin", 3.0}, {"rmax", 2.0}};
    expect_error([&] { BatchNormalization layer(options); }, ErrorCategory::invalid_argument,
                 "rmin <= rmax");
    // Without renorm TF never looks at the clipping dictionary.
    options.renorm = false;
    options.renorm_clipping = {{"anything", 1.0}};
    EXPECT_NO_THROW(BatchNormalization layer(options));
}

TEST(BatchNormalizationConstruction, UnknownInitializerNameIsAnError) {
    BatchNormalizationOptions options;
    options.gamma_initializer = "not_an_initializer";
    expect_error([&] { BatchNormalization layer(options); }, ErrorCategory::invalid_argument,
                 "gamma_initializer");
}

TEST(BatchNormalizationConstruction, EmptyAxisListIsAnError) {
    expect_error([] { BatchNormalization layer(with_axis(std::vector<int>{})); },
                 ErrorCategory::invalid_argument, "axis = []");
}

TEST(BatchNormalizationBuild, AxisOutOfRangeShowsTheResolvedValue) {
    BatchNormalization layer(with_axis(-3));
    expect_error(
        [&] {
            layer.build({4, 3});
        },
        ErrorCategory::invalid_argument, "axis = -1 (resolved)");
    EXPECT_FALSE(layer.built());
}

TEST(BatchNormalizationBuild, DuplicateAxesAreFoundAfterResolution) {
    BatchNormalization layer(with_axis(std::vector<int>{1, -1}));
    expect_error([&] { layer.build({4, 3}); }, ErrorCategory::invalid_argument, "duplicate");
}

TEST(BatchNormalizationBuild, RankZeroIsAnUndefinedRank) {
    BatchNormalization layer;
    expect_error([&] { layer.build(keel::Shape{}); }, ErrorCategory::invalid_argument,
                 "input rank");
}

TEST(BatchNormalizationBuild, VirtualBatchChecks) {
    BatchNormalizationOptions options;
    options.virtual_batch_size = 0;
    expect_error(
        [&] {
            BatchNormalization(options).build({4, 3});
        },
        ErrorCategory::invalid_argument, "virtual_batch_size = 0");
    options.virtual_batch_size = 2;
    options.axis = 0;
    expect_error(
        [&] {
            BatchNormalization(options).build({4, 3});
        },
        ErrorCategory::invalid_argument, "axis 0");
    options.axis = -1;
    options.adjustment = [](const Shape&) {
        return std::pair{Tensor::filled({1}, 1.0f), Tensor::filled({1}, 0.0f)};
    };
    expect_error(
        [&] {
            BatchNormalization(options).build({4, 3});
        },
        ErrorCategory::invalid_argument, "adjustment");
}

TEST(BatchNormalizationBuild, FusedTrueNeedsRankFourInV2ButFallsBackInV1) {
    BatchNormalizationOptions options;
    options.fused = true;
    expect_error(
        [&] {
            BatchNormalization(options).build({4, 3, 2});
        },
        ErrorCategory::invalid_argument, "fused = true");
    options.behavior = BatchNormalizationBehavior::v1;
    BatchNormalization v1_layer(options);
    v1_layer.build({4, 3, 2});
    EXPECT_FALSE(v1_layer.fused());
}

TEST(BatchNormalizationBuild, FusedDecisionFollowsTheBehavior) {
    auto fused_for = [](BatchNormalizationOptions options, const Shape& shape) {
        BatchNormalization layer(std::move(options));
        layer.build(shape);
        return layer.fused();
    };
    EXPECT_TRUE(fused_for(with_axis(-1), {2, 3, 3, 4}));
    EXPECT_TRUE(fused_for(with_axis(1), {2, 3, 3, 4}));
    EXPECT_FALSE(fused_for(with_axis(-1), {2, 4}));
    EXPECT_FALSE(fused_for(with_axis(2), {2, 3, 3, 4}));
    EXPECT_FALSE(fused_for(with_axis(-1), {2, 3, 3, 3, 4}));  // 1.15 fuses rank 4 only

    BatchNormalizationOptions tf_keras = with_axis(-1);
    tf_keras.behavior = BatchNormalizationBehavior::tf_keras;
    EXPECT_TRUE(fused_for(tf_keras, {2, 3, 3, 3, 4}));
    tf_keras.axis = 2;
    EXPECT_FALSE(fused_for(tf_keras, {2, 3, 3, 3, 4}));  // quietly unfused
    // tf_keras quirk (spec §4): axis −4 passes the constructor on rank 4, then build raises.
    tf_keras.axis = -4;
    expect_error(
        [&] {
            fused_for(tf_keras, {2, 3, 3, 4});
        },
        ErrorCategory::invalid_argument, "axis = [0] (resolved)");

    BatchNormalizationOptions v1 = with_axis(-1);
    v1.behavior = BatchNormalizationBehavior::v1;
    v1.fused = false;
    EXPECT_FALSE(fused_for(v1, {2, 3, 3, 4}));
}

TEST(BatchNormalizationBuild, ParameterShapesFollowKeras) {
    auto shape_of = [](BatchNormalizationOptions options, const Shape& input) {
        BatchNormalization layer(std::move(options));
        layer.build(input);
        return layer.variable("moving_mean").shape();
    };
    EXPECT_EQ(shape_of(with_axis(-1), {2, 5, 5, 3}), (Shape{3}));
    EXPECT_EQ(shape_of(with_axis(std::vector<int>{1, 3}), {2, 5, 6, 3}), (Shape{1, 5, 1, 3}));
    BatchNormalizationOptions ghost = with_axis(-1);
    ghost.virtual_batch_size = 2;
    EXPECT_EQ(shape_of(ghost, {4, 3}), (Shape{1, 1, 3}));
    ghost.axis = 1;
    EXPECT_EQ(shape_of(ghost, {4, 3, 5, 5}), (Shape{1, 1, 3, 1, 1}));
}

TEST(BatchNormalizationBuild, VariablesInKerasCreationOrder) {
    BatchNormalizationOptions options;
    options.renorm = true;
    BatchNormalization layer(options);
    layer.build({2, 3});
    EXPECT_THAT(layer.variable_names(),
                ElementsAre("gamma", "beta", "moving_mean", "moving_variance", "moving_stddev",
                            "renorm_mean", "renorm_stddev"));
    EXPECT_THAT(layer.trainable_variable_names(), ElementsAre("gamma", "beta"));
    options.center = false;
    options.scale = false;
    options.renorm = false;
    BatchNormalization bare(options);
    bare.build({2, 3});
    EXPECT_THAT(bare.variable_names(), ElementsAre("moving_mean", "moving_variance"));
}

TEST(BatchNormalizationCall, TrainingUsesBatchStatisticsAndUpdatesMovingOnes) {
    BatchNormalizationOptions options;
    options.momentum = 0.5;
    options.fused = false;  // generic path: biased variance in the update
    BatchNormalization layer(options);
    const Tensor y = layer.call(nhwc_input(), {.training = true});

    // y = (x − μ)/sqrt(σ² + ε): channel 0 (μ 4, σ² 5), channel 1 (μ 0, σ² 4); ε = 1e-3.
    const std::vector<float> x = values(nhwc_input());
    const std::vector<float> out = values(y);
    const double mean[2] = {4.0, 0.0};
    const double variance[2] = {5.0, 4.0};
    for (std::size_t i = 0; i < out.size(); ++i) {
        const double exact = (x[i] - mean[i % 2]) / std::sqrt(variance[i % 2] + 1e-3);
        // A handful of f32 roundings on values of magnitude <= 1.5.
        EXPECT_NEAR(out[i], exact, 8 * kEps32 * 1.5) << i;
    }
    // v ← v − (v − value)·0.5 from (0, 1): moving_mean (2, 0); moving_variance (3, 2.5).
    EXPECT_THAT(values(layer.variable("moving_mean")), ElementsAre(2.0f, 0.0f));
    EXPECT_THAT(values(layer.variable("moving_variance")), ElementsAre(3.0f, 2.5f));
    EXPECT_TRUE(layer.last_call_report().training);
    EXPECT_FALSE(layer.last_call_report().fused_semantics);
}

TEST(BatchNormalizationCall, FusedSemanticsUseBesselsCorrectionForTheMovingVariance) {
    BatchNormalizationOptions options;
    options.momentum = 0.0;
    BatchNormalization layer(options);  // fused=None on rank 4, axis -1: fused
    layer.call(nhwc_input(), {.training = true});
    ASSERT_TRUE(layer.fused());
    EXPECT_TRUE(layer.last_call_report().fused_semantics);
    // n = 4: unbiased variances 5·4/3 and 4·4/3; with momentum 0 the variable becomes the value
    // up to the float rounding of v − (v − value) (spec §13).
    const std::vector<float> moving_variance = values(layer.variable("moving_variance"));
    EXPECT_NEAR(moving_variance[0], 20.0 / 3.0, 4 * kEps32 * 20.0 / 3.0);
    EXPECT_NEAR(moving_variance[1], 16.0 / 3.0, 4 * kEps32 * 16.0 / 3.0);
}

TEST(BatchNormalizationCall, FusedSemanticsClampEpsilonAlsoAtInference) {
    BatchNormalizationOptions options;
    options.epsilon = 1e-10;
    options.moving_variance_initializer = "zeros";
    BatchNormalization fused_layer(options);
    options.fused = false;
    BatchNormalization generic_layer(options);
    const Tensor x = Tensor::filled({1, 1, 1, 1}, 1e-3f);
    // Moving variance 0: y = x/sqrt(ε): the fused path sees ε = 1.001e-5, the generic one 1e-10.
    const float fused_y = fused_layer.call(x).get(0);
    const float generic_y = generic_layer.call(x).get(0);
    EXPECT_NEAR(fused_y, 1e-3 / std::sqrt(1.001e-5), 8 * kEps32 * 0.32);
    EXPECT_NEAR(generic_y, 1e-3 / std::sqrt(1e-10), 8 * kEps32 * 1e2);
}

// A per-channel adjustment folds into the per-channel coefficients (one multiply-add per element,
// the plain kernel); a per-sample one needs the element-wise kernel. Both must stay within the
// numeric contract of docs/batch_normalization.md against a double evaluation of
// ((x − μ)/√(σ² + ε)·s + b)·γ + β: |y − exact| ≤ (2·2⁻²³ + 64·2⁻²³)·max|y| (f32 output, keel's
// kernels hold the mean exactly).
TEST(BatchNormalizationCall, PerChannelAdjustmentsFoldAndStayWithinTheContract) {
    constexpr std::int64_t kBatch = 4, kPixels = 6, kChannels = 5;
    std::vector<float> x_values(kBatch * kPixels * kChannels);
    for (std::size_t i = 0; i < x_values.size(); ++i) {
        x_values[i] = 1e4f + 0.37f * static_cast<float>((i * 7919) % 101) - 18.0f;
    }
    const Tensor x = Tensor::from_floats({kBatch, 1, kPixels, kChannels}, x_values);
    std::vector<float> scale(kChannels), bias(kChannels);
    for (std::int64_t c = 0; c < kChannels; ++c) {
        scale[static_cast<std::size_t>(c)] = 0.9f + 0.05f * static_cast<float>(c);
        bias[static_cast<std::size_t>(c)] = -0.1f + 0.04f * static_cast<float>(c);
    }
    std::vector<float> per_sample_scale, per_sample_bias;
    for (std::int64_t n = 0; n < kBatch; ++n) {
        per_sample_scale.insert(per_sample_scale.end(), scale.begin(), scale.end());
        per_sample_bias.insert(per_sample_bias.end(), bias.begin(), bias.end());
    }
    // Exact result in double.
    std::vector<double> exact(x_values.size());
    double largest = 0.0;
    for (std::int64_t c = 0; c < kChannels; ++c) {
        double sum = 0.0, squares = 0.0;
        const std::int64_t count = kBatch * kPixels;
        for (std::int64_t i = 0; i < count; ++i)
            sum += x_values[static_cast<std::size_t>(i * kChannels + c)];
        const double mean = sum / static_cast<double>(count);
        for (std::int64_t i = 0; i < count; ++i) {
            const double deviation = x_values[static_cast<std::size_t>(i * kChannels + c)] - mean;
            squares += deviation * deviation;
        }
        const double inverse =
            1.0 / std::sqrt(squares / static_cast<double>(count) +
                            static_cast<double>(0.001f));  // Keras' default epsilon, as f32
        for (std::int64_t i = 0; i < count; ++i) {
            const auto e = static_cast<std::size_t>(i * kChannels + c);
            exact[e] = (x_values[e] - mean) * inverse * scale[static_cast<std::size_t>(c)] +
                       bias[static_cast<std::size_t>(c)];
            largest = std::max(largest, std::fabs(exact[e]));
        }
    }
    const double tolerance = 66.0 * std::ldexp(1.0, -23) * largest;

    for (const bool per_channel : {true, false}) {
        SCOPED_TRACE(per_channel ? "per channel" : "per sample");
        BatchNormalizationOptions options;
        options.adjustment = [&](const Shape&) {
            return per_channel
                       ? std::pair{Tensor::from_floats({kChannels}, scale),
                                   Tensor::from_floats({kChannels}, bias)}
                       : std::pair{Tensor::from_floats({kBatch, 1, 1, kChannels}, per_sample_scale),
                                   Tensor::from_floats({kBatch, 1, 1, kChannels}, per_sample_bias)};
        };
        BatchNormalization layer(options);
        const Tensor y = layer.call(x, {.training = true});
        for (std::size_t e = 0; e < exact.size(); ++e) {
            ASSERT_NEAR(y.get(static_cast<std::int64_t>(e)), exact[e], tolerance)
                << "element " << e;
        }
        const std::string implementation = layer.last_call_report().implementation;
        EXPECT_EQ(implementation.find("adjusted") == std::string::npos, per_channel)
            << implementation;
    }
}

// The report counts the bytes of each pass: inference reads x and writes y, training reads x a
// second time for the statistics; converting an input of another dtype and reading the
// adjustment's operands come on top.
TEST(BatchNormalizationCall, ReportCountsTheBytesOfEveryPass) {
    const Tensor x = Tensor::filled({2, 3, 4, 5}, 1.5f);  // 120 elements, 480 bytes in f32
    BatchNormalization plain;
    plain.call(x);
    EXPECT_EQ(plain.last_call_report().bytes_moved, 2 * 480);
    plain.call(x, {.training = true});
    EXPECT_EQ(plain.last_call_report().bytes_moved, 3 * 480);

    BatchNormalizationOptions bf16;
    bf16.dtype = "bfloat16";
    BatchNormalization narrow(bf16);
    narrow.call(x);  // converts: reads 480 f32 bytes, writes 240 bf16 bytes, then two passes
    EXPECT_EQ(narrow.last_call_report().bytes_moved, 480 + 240 + 2 * 240);

    BatchNormalizationOptions adjusted;
    adjusted.adjustment = [](const Shape&) {
        return std::pair{Tensor::filled({1, 1, 1, 5}, 2.0f), Tensor::filled({2, 1, 1, 5}, 0.5f)};
    };
    BatchNormalization with_adjustment(adjusted);
    with_adjustment.call(x, {.training = true});
    EXPECT_EQ(with_adjustment.last_call_report().bytes_moved, 3 * 480 + 5 * 4 + 10 * 4);
    with_adjustment.call(x);  // inference never calls the adjustment
    EXPECT_EQ(with_adjustment.last_call_report().bytes_moved, 2 * 480);
}

// tf_keras' fused training (spec §11.2) writes (1 − f)·old + f·new in float32 with
// f = f32(1 − momentum), where TF 1.15 (v2, v1) subtracts (old − new)·f32(1 − f32(momentum)).
// Integer data in pairs makes the batch statistics exact (mean (a + b)/2, corrected variance
// 2·((a − b)/2)²), so each form is exact f32 arithmetic the test repeats, and with momentum 0.99
// and fractional old values the two forms round differently on some channels.
TEST(BatchNormalizationCall, TfKerasFusedUpdatesBlendAsItsKernelDoes) {
    constexpr std::int64_t kChannels = 64;
    std::vector<float> x_values(2 * kChannels);
    std::vector<float> old_mean(kChannels);
    std::vector<float> old_variance(kChannels);
    for (std::int64_t c = 0; c < kChannels; ++c) {
        x_values[static_cast<std::size_t>(c)] = static_cast<float>(c % 7);
        x_values[static_cast<std::size_t>(kChannels + c)] = static_cast<float>(c % 5 + 2);
        old_mean[static_cast<std::size_t>(c)] = 0.1f * static_cast<float>(c) + 0.37f;
        old_variance[static_cast<std::size_t>(c)] = 1.0f + 0.013f * static_cast<float>(c);
    }
    const Tensor x = Tensor::from_floats({2, 1, 1, kChannels}, x_values);
    std::int64_t forms_differ = 0;
    for (const auto behavior :
         {BatchNormalizationBehavior::tf_keras, BatchNormalizationBehavior::v2}) {
        BatchNormalizationOptions options;
        options.behavior = behavior;
        options.momentum = 0.99;
        BatchNormalization layer(options);
        layer.build(std::vector<Shape>{x.shape()});
        ASSERT_TRUE(layer.fused());
        layer.set_variable("moving_mean", Tensor::from_floats({kChannels}, old_mean));
        layer.set_variable("moving_variance", Tensor::from_floats({kChannels}, old_variance));
        layer.call(x, {.training = true});
        const std::vector<float> mean = values(layer.variable("moving_mean"));
        const std::vector<float> variance = values(layer.variable("moving_variance"));
        for (std::size_t c = 0; c < static_cast<std::size_t>(kChannels); ++c) {
            const float a = x_values[c];
            const float b = x_values[static_cast<std::size_t>(kChannels) + c];
            const float batch_mean = (a + b) / 2.0f;
            const float batch_variance = 2.0f * ((a - b) / 2.0f) * ((a - b) / 2.0f);
            const auto f = static_cast<float>(1.0 - 0.99);
            const float blend_mean = (1.0f - f) * old_mean[c] + f * batch_mean;
            const float blend_variance = (1.0f - f) * old_variance[c] + f * batch_variance;
            const float decay = 1.0f - 0.99f;
            const float sub_mean = old_mean[c] - (old_mean[c] - batch_mean) * decay;
            const float sub_variance = old_variance[c] - (old_variance[c] - batch_variance) * decay;
            if (behavior == BatchNormalizationBehavior::tf_keras) {
                EXPECT_EQ(mean[c], blend_mean) << "channel " << c;
                EXPECT_EQ(variance[c], blend_variance) << "channel " << c;
                forms_differ += blend_mean != sub_mean || blend_variance != sub_variance;
            } else {
                EXPECT_EQ(mean[c], sub_mean) << "channel " << c;
                EXPECT_EQ(variance[c], sub_variance) << "channel " << c;
            }
        }
    }
    EXPECT_GT(forms_differ, 0) << "the data should tell the two rounding forms apart";
}

// Keras 3 has no fused path: on a rank-4 input it keeps epsilon as given, updates the moving
// variance with the biased variance, and blends as v·m + value·(1 − m) in float32.
TEST(BatchNormalizationCall, Keras3BehaviorIsNeverFused) {
    BatchNormalizationOptions options;
    options.behavior = BatchNormalizationBehavior::keras3;
    options.momentum = 0.75;
    options.epsilon = 1e-10;
    BatchNormalization layer(options);
    layer.call(nhwc_input(), {.training = true});
    EXPECT_FALSE(layer.fused());
    EXPECT_FALSE(layer.last_call_report().fused_semantics);
    // Biased variances 5 and 4, means 4 and 0; the f32 blend of the initial 0 / 1 is exact here:
    // 0·0.75 + 4·0.25 = 1, 1·0.75 + 5·0.25 = 2, 1·0.75 + 4·0.25 = 1.75.
    EXPECT_THAT(values(layer.variable("moving_mean")), ElementsAre(1.0f, 0.0f));
    EXPECT_THAT(values(layer.variable("moving_variance")), ElementsAre(2.0f, 1.75f));

    BatchNormalizationOptions zero_variance = options;
    zero_variance.moving_variance_initializer = "zeros";
    BatchNormalization inference(zero_variance);
    // Moving variance 0: y = x/sqrt(ε) with ε = 1e-10, not TensorFlow's fused floor 1.001e-5.
    EXPECT_NEAR(inference.call(Tensor::filled({1, 1, 1, 1}, 1e-3f)).get(0), 1e2, 8 * kEps32 * 1e2);
}

TEST(BatchNormalizationConstruction, Keras3BehaviorRefusesTensorFlowOnlyArguments) {
    const auto keras3 = [](BatchNormalizationOptions options) {
        options.behavior = BatchNormalizationBehavior::keras3;
        return options;
    };
    BatchNormalizationOptions renorm;
    renorm.renorm = true;
    expect_error([&] { BatchNormalization layer(keras3(renorm)); }, ErrorCategory::invalid_argument,
                 "renorm = true");
    BatchNormalizationOptions virtual_batches;
    virtual_batches.virtual_batch_size = 2;
    expect_error([&] { BatchNormalization layer(keras3(virtual_batches)); },
                 ErrorCategory::invalid_argument, "virtual_batch_size = 2");
    expect_error(
        [&] {
            BatchNormalization layer(keras3(with_axis(std::vector<int>{1, 3})));
        },
        ErrorCategory::invalid_argument, "axis");
    BatchNormalizationOptions fused;
    fused.fused = true;
    expect_error([&] { BatchNormalization layer(keras3(fused)); }, ErrorCategory::invalid_argument,
                 "fused = true");
    EXPECT_EQ(parse_behavior("keras3"), BatchNormalizationBehavior::keras3);
}

TEST(BatchNormalizationCall, UnspecifiedTrainingMeansInference) {
    BatchNormalization layer;
    const Tensor x = nhwc_input();
    const std::vector<float> out = values(layer.call(x));
    const std::vector<float> in = values(x);
    for (std::size_t i = 0; i < out.size(); ++i) {
        // Moving statistics (0, 1): y = x/sqrt(1 + 1e-3).
        EXPECT_NEAR(out[i], in[i] / std::sqrt(1.001), 4 * kEps32 * 7) << i;
    }
    EXPECT_THAT(values(layer.variable("moving_mean")), ElementsAre(0.0f, 0.0f));
    EXPECT_FALSE(layer.last_call_report().training);
}

TEST(BatchNormalizationCall, FrozenLayerIsInferenceInV2ButBatchStatisticsInV1) {
    BatchNormalizationOptions options;
    options.trainable = false;
    BatchNormalization v2(options);
    v2.call(nhwc_input(), {.training = true});
    EXPECT_FALSE(v2.last_call_report().training);

    options.behavior = BatchNormalizationBehavior::v1;
    BatchNormalization v1(options);
    const std::vector<float> out = values(v1.call(nhwc_input(), {.training = true}));
    EXPECT_TRUE(v1.last_call_report().training);
    EXPECT_NEAR(out[0], (1.0 - 4.0) / std::sqrt(5.0 + 1e-3), 8 * kEps32 * 1.5);
    // ...but nothing is updated.
    EXPECT_THAT(values(v1.variable("moving_mean")), ElementsAre(0.0f, 0.0f));
    EXPECT_THAT(values(v1.variable("moving_variance")), ElementsAre(1.0f, 1.0f));
}

TEST(BatchNormalizationCall, VirtualBatchesAreStrided) {
    // B = 4, vbs = 2: TF's reshape to [2, 2, C] makes groups {0, 2} and {1, 3}.
    BatchNormalizationOptions options;
    options.virtual_batch_size = 2;
    options.epsilon = 0.0;
    options.momentum = 0.0;
    BatchNormalization layer(options);
    const Tensor x = Tensor::from_floats({4, 1}, std::vector<float>{0, 10, 2, 30});
    const std::vector<float> y = values(layer.call(x, {.training = true}));
    // Group {0, 2}: mean 1, variance 1 → −1, +1. Group {10, 30}: mean 20, variance 100 → −1, +1.
    EXPECT_THAT(y, ElementsAre(-1.0f, -1.0f, 1.0f, 1.0f));
    // Moving statistics: mean of group means (1 + 20)/2, mean of group variances (1 + 100)/2.
    EXPECT_NEAR(layer.variable("moving_mean").get(0), 10.5, 4 * kEps32 * 10.5);
    EXPECT_NEAR(layer.variable("moving_variance").get(0), 50.5, 4 * kEps32 * 50.5);
    EXPECT_EQ(layer.variable("moving_mean").shape(), (Shape{1, 1, 1}));
}

TEST(BatchNormalizationCall, RenormCorrectionIsClippedInTfOrder) {
    BatchNormalizationOptions options;
    options.renorm = true;
    options.renorm_clipping = {{"rmax", 1.5}, {"dmax", 0.25}};
    options.epsilon = 0.0;
    BatchNormalization layer(options);
    // One channel: 0, 4 → mean 2, variance 4, stddev 2; renorm stats start at (0, 1).
    layer.call(Tensor::from_floats({2, 1}, std::vector<float>{0, 4}), {.training = true});
    // r = 2/1 → clipped to 1.5; d = (2 − 0)/1 → clipped to 0.25.
    EXPECT_FLOAT_EQ(layer.last_renorm_r().get(0), 1.5f);
    EXPECT_FLOAT_EQ(layer.last_renorm_d().get(0), 0.25f);
}

// Variable values for a layer with gamma, beta, moving_mean and moving_variance of `channels`
// entries; `seed` varies them.
std::vector<Tensor> variable_values(std::int64_t channels, int seed) {
    std::vector<Tensor> variables;
    for (int v = 0; v < 4; ++v) {
        std::vector<float> data(static_cast<std::size_t>(channels));
        for (std::size_t c = 0; c < data.size(); ++c) {
            const float wiggle = 0.125f * static_cast<float>((seed * 5 + v * 3 + c) % 7);
            data[c] = v == 3 ? 0.5f + wiggle : wiggle - 0.25f * static_cast<float>(v);
        }
        variables.push_back(Tensor::from_floats({channels}, data));
    }
    return variables;
}

// What a layer that has never run computes from `variables`: no cache can be involved.
Tensor fresh_inference(const Tensor& x, const std::vector<Tensor>& variables) {
    BatchNormalization layer;
    layer.build(x.shape());
    const char* names[] = {"gamma", "beta", "moving_mean", "moving_variance"};
    for (std::size_t v = 0; v < variables.size(); ++v) {
        layer.set_variable(names[v], variables[v].clone());
    }
    return layer.call(x);
}

TEST(BatchNormalizationCall, InferenceFollowsEveryNewSetOfVariables) {
    // More sets than the layer caches coefficients for, twice over: every call must use the
    // values it is given, whether they were cached, evicted or never seen.
    const Tensor x = nhwc_input();
    std::vector<std::vector<Tensor>> sets;
    for (int seed = 0; seed < 11; ++seed) sets.push_back(variable_values(2, seed));
    BatchNormalization layer;
    layer.build(x.shape());
    std::vector<VariableUpdate> updates;
    for (int round = 0; round < 2; ++round) {
        for (std::size_t s = 0; s < sets.size(); ++s) {
            const ForwardContext context{std::span<const Tensor>(&x, 1), sets[s], false, updates};
            EXPECT_EQ(values(layer.forward(context)), values(fresh_inference(x, sets[s])))
                << "set " << s << ", round " << round;
        }
    }
    EXPECT_TRUE(updates.empty());
}

TEST(BatchNormalizationCall, InferenceRereadsVariablesThatAreViews) {
    // A view's memory belongs to its caller, who may overwrite it between calls under the same
    // address: nothing computed from it may be reused.
    const Tensor x = nhwc_input();
    std::vector<Tensor> owned = variable_values(2, 1);
    std::vector<std::vector<float>> memory;
    for (const Tensor& tensor : owned) memory.push_back(values(tensor));
    std::vector<Tensor> views;
    for (std::vector<float>& values_of : memory) {
        views.push_back(Tensor::view(values_of.data(), {2}, DType::f32));
    }
    BatchNormalization layer;
    layer.build(x.shape());
    std::vector<VariableUpdate> updates;
    const ForwardContext context{std::span<const Tensor>(&x, 1), views, false, updates};
    EXPECT_EQ(values(layer.forward(context)), values(fresh_inference(x, owned)));

    const std::vector<Tensor> others = variable_values(2, 4);
    for (std::size_t v = 0; v < others.size(); ++v) {
        const std::vector<float> replacement = values(others[v]);
        std::copy(replacement.begin(), replacement.end(), memory[v].begin());
    }
    EXPECT_EQ(values(layer.forward(context)), values(fresh_inference(x, others)));
}

TEST(BatchNormalizationCall, ConcurrentCallsMatchSerialOnes) {
    // One layer, four threads, calls mixing shapes, modes, fused ReLU and variable sets (more
    // sets than the coefficient cache holds): each result must be the one a serial call gives.
    BatchNormalizationOptions options;
    options.momentum = 0.5;
    BatchNormalization layer(options);
    layer.build({-1, 3, 2, 5});
    std::vector<std::vector<Tensor>> sets;
    for (int seed = 0; seed < 10; ++seed) sets.push_back(variable_values(5, seed));
    std::vector<Tensor> inputs;
    for (std::int64_t batch = 1; batch <= 3; ++batch) {
        std::vector<float> data(static_cast<std::size_t>(batch * 30));
        for (std::size_t i = 0; i < data.size(); ++i) {
            data[i] =
                0.5f * static_cast<float>((i * 37 + static_cast<std::size_t>(batch)) % 23) - 4.0f;
        }
        inputs.push_back(Tensor::from_floats({batch, 3, 2, 5}, data));
    }

    struct Result {
        std::vector<float> y;
        std::vector<std::vector<float>> updates;
    };
    constexpr int kCalls = 120;
    auto run = [&](int call) {
        const Tensor& x = inputs[static_cast<std::size_t>(call % 3)];
        const std::vector<Tensor>& variables = sets[static_cast<std::size_t>(call % 10)];
        const bool training = call % 4 == 0;
        std::vector<VariableUpdate> updates;
        const ForwardContext context{std::span<const Tensor>(&x, 1), variables, training, updates};
        Result result;
        result.y =
            values(call % 7 == 0 ? layer.forward_then_relu(context) : layer.forward(context));
        for (const VariableUpdate& update : updates) result.updates.push_back(values(update.value));
        return result;
    };
    std::vector<Result> serial;
    for (int call = 0; call < kCalls; ++call) serial.push_back(run(call));

    constexpr int kThreads = 4;
    std::vector<std::vector<Result>> concurrent(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            // Each thread walks the calls from a different starting point.
            for (int i = 0; i < kCalls; ++i) {
                concurrent[static_cast<std::size_t>(t)].push_back(run((i + t * 31) % kCalls));
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    for (int t = 0; t < kThreads; ++t) {
        for (int i = 0; i < kCalls; ++i) {
            const int call = (i + t * 31) % kCalls;
            const Result& got =
                concurrent[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)];
            const Result& expected = serial[static_cast<std::size_t>(call)];
            EXPECT_EQ(got.y, expected.y) << "thread " << t << ", call " << call;
            EXPECT_EQ(got.updates, expected.updates) << "thread " << t << ", call " << call;
        }
    }
}

TEST(BatchNormalizationCall, FailedCallsChangeNoVariable) {
    BatchNormalizationOptions options;
    options.virtual_batch_size = 2;
    BatchNormalization layer(options);
    layer.call(Tensor::filled({2, 3}, 1.0f), {.training = true});
    const std::vector<float> mean_before = values(layer.variable("moving_mean"));
    const std::vector<float> variance_before = values(layer.variable("moving_variance"));

    expect_error(
        [&] {
            layer.call(Tensor::filled({2, 3, 1}, 1.0f), {.training = true});
        },
        ErrorCategory::shape_mismatch, "input rank");
    expect_error(
        [&] {
            layer.call(Tensor::filled({2, 4}, 1.0f), {.training = true});
        },
        ErrorCategory::shape_mismatch, "input dimension 1");
    expect_error(
        [&] {
            layer.call(Tensor::filled({3, 3}, 1.0f), {.training = true});
        },
        ErrorCategory::shape_mismatch, "virtual_batch_size = 2");
    EXPECT_EQ(values(layer.variable("moving_mean")), mean_before);
    EXPECT_EQ(values(layer.variable("moving_variance")), variance_before);
}

// Layer::call commits its own update list, computing the next moving statistics in the storage
// of the values it staged; commit_updates (the graph runtime's way) leaves the list as it is and
// makes new tensors. Both must publish the same bits, for every kind of update.
TEST(BatchNormalizationCall, CallCommitsTheBitsCommitUpdatesDoes) {
    struct Variant {
        std::string name;
        BatchNormalizationOptions options;
    };
    std::vector<Variant> variants;
    auto add = [&](std::string name, auto&& configure) {
        BatchNormalizationOptions options;
        options.momentum = 0.7;  // far from 1, so every step moves the statistics visibly
        configure(options);
        variants.push_back({std::move(name), std::move(options)});
    };
    add("v2_fused", [](BatchNormalizationOptions&) {});
    add("v2_generic", [](BatchNormalizationOptions& options) { options.fused = false; });
    add("tf_keras_fused_blend", [](BatchNormalizationOptions& options) {
        options.behavior = BatchNormalizationBehavior::tf_keras;
    });
    add("keras3_blend", [](BatchNormalizationOptions& options) {
        options.behavior = BatchNormalizationBehavior::keras3;
    });
    add("renorm_assignments", [](BatchNormalizationOptions& options) {
        options.renorm = true;
        options.renorm_clipping = {{"rmax", 1.25}, {"dmax", 0.5}};
    });
    std::vector<float> data(3 * 2 * 2 * 5);
    for (std::size_t i = 0; i < data.size(); ++i) {
        data[i] = 0.37f * static_cast<float>((i * 13) % 17) - 2.5f + 0.01f * static_cast<float>(i);
    }
    const Tensor x = Tensor::from_floats({3, 2, 2, 5}, data);
    for (const Variant& variant : variants) {
        BatchNormalization by_call(variant.options);
        BatchNormalization by_commit(variant.options);
        by_call.build(x.shape());
        by_commit.build(x.shape());
        for (int step = 0; step < 3; ++step) {
            const std::vector<float> y_call = values(by_call.call(x, {.training = true}));
            const VariableSnapshot snapshot = by_commit.variables_snapshot();
            std::vector<VariableUpdate> updates;
            const ForwardContext context{std::span<const Tensor>(&x, 1), *snapshot, true, updates};
            const std::vector<float> y_commit = values(by_commit.forward(context));
            ASSERT_FALSE(updates.empty()) << variant.name;
            for (const VariableUpdate& update : updates) {
                EXPECT_TRUE(update.value_is_private) << variant.name;
            }
            std::vector<std::vector<float>> staged;
            for (const VariableUpdate& update : updates) staged.push_back(values(update.value));
            by_commit.commit_updates(updates);
            // commit_updates reads the list without consuming it.
            for (std::size_t u = 0; u < updates.size(); ++u) {
                EXPECT_EQ(values(updates[u].value), staged[u]) << variant.name;
            }
            EXPECT_EQ(y_call, y_commit) << variant.name << ", step " << step;
            for (const std::string& name : by_call.variable_names()) {
                EXPECT_EQ(values(by_call.variable(name)), values(by_commit.variable(name)))
                    << variant.name << ", step " << step << ", " << name;
            }
        }
    }
}

// Training calls from several threads on one layer, all on the same batch: each commit moves the
// moving statistics by the same function of their current value, so whatever order the commits
// take, the result equals as many serial calls, provided no commit is lost or torn.
TEST(BatchNormalizationCall, ConcurrentTrainingCallsCommitEveryUpdate) {
    constexpr int kThreads = 4;
    constexpr int kCallsPerThread = 40;
    BatchNormalizationOptions options;
    options.momentum = 0.9;
    std::vector<float> data(2 * 4 * 4 * 8);
    for (std::size_t i = 0; i < data.size(); ++i) {
        data[i] = 0.25f * static_cast<float>((i * 7) % 19) - 1.5f;
    }
    const Tensor x = Tensor::from_floats({2, 4, 4, 8}, data);
    BatchNormalization serial(options);
    for (int call = 0; call < kThreads * kCallsPerThread; ++call) {
        serial.call(x, {.training = true});
    }
    BatchNormalization shared(options);
    shared.build(x.shape());
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&] {
            for (int call = 0; call < kCallsPerThread; ++call) shared.call(x, {.training = true});
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(values(shared.variable("moving_mean")), values(serial.variable("moving_mean")));
    EXPECT_EQ(values(shared.variable("moving_variance")),
              values(serial.variable("moving_variance")));
}

TEST(BatchNormalizationCall, BadAdjustmentShapeChangesNothing) {
    BatchNormalizationOptions options;
    options.adjustment = [](const Shape&) {
        return std::pair{Tensor::filled({5}, 1.0f), Tensor::filled({3}, 0.0f)};
    };
    BatchNormalization layer(options);
    expect_error(
        [&] {
            layer.call(Tensor::filled({2, 3}, 1.0f), {.training = true});
        },
        ErrorCategory::shape_mismatch, "adjustment scale shape = [5]");
    EXPECT_THAT(values(layer.variable("moving_mean")), ElementsAre(0.0f, 0.0f, 0.0f));
    // Inference never calls the adjustment.
    EXPECT_NO_THROW(layer.call(Tensor::filled({2, 3}, 1.0f)));
}

TEST(BatchNormalizationCall, EmptyTrainingBatchChangesNothing) {
    BatchNormalization layer;
    layer.build({2, 3});
    const Tensor y = layer.call(Tensor({0, 3}, DType::f32), {.training = true});
    EXPECT_EQ(y.shape(), (Shape{0, 3}));
    EXPECT_THAT(values(layer.variable("moving_mean")), ElementsAre(0.0f, 0.0f, 0.0f));
    EXPECT_THAT(values(layer.variable("moving_variance")), ElementsAre(1.0f, 1.0f, 1.0f));
}

TEST(BatchNormalizationCall, OutputIsInTheComputeDtype) {
    BatchNormalizationOptions options;
    options.dtype = "bfloat16";
    BatchNormalization layer(options);
    const Tensor y = layer.call(nhwc_input(), {.training = true});
    EXPECT_EQ(y.dtype(), DType::bf16);
    EXPECT_EQ(layer.variable("moving_mean").dtype(), DType::f32);
    // Channel 0, first element: (1 − 4)/sqrt(5.001) = −1.3415; bf16 keeps 8 bits.
    EXPECT_NEAR(y.get(0), -3.0 / std::sqrt(5.001), 1.3416 * std::ldexp(1.0, -8));
}

TEST(BatchNormalizationConfig, RoundTripsThroughKerasJson) {
    BatchNormalizationOptions options = with_axis(std::vector<int>{1, 3});
    options.momentum = 0.9;
    options.renorm = true;
    options.renorm_clipping = {{"rmax", 3.0}};
    options.virtual_batch_size = 2;
    options.gamma_regularizer = "l2";
    options.name = "bn_config";
    BatchNormalization layer(options);
    const nlohmann::json config = layer.get_config();
    EXPECT_EQ(config["axis"], nlohmann::json({1, 3}));
    EXPECT_EQ(config["gamma_regularizer"]["class_name"], "L1L2");
    EXPECT_EQ(config["renorm_clipping"]["rmax"], 3.0);
    EXPECT_EQ(config["behavior"], "v2");
    auto rebuilt = BatchNormalization::from_config(config);
    EXPECT_EQ(rebuilt->get_config(), config);
    // The user's axis survives build (TF would store the virtual-batch-shifted one).
    layer.build({4, 5, 6, 3});
    EXPECT_EQ(layer.get_config()["axis"], nlohmann::json({1, 3}));
}

TEST(BatchNormalizationConfig, UnknownKeysAndWrongTypesAreErrors) {
    expect_error(
        [] {
            BatchNormalization::from_config({{"axes", 1}});
        },
        ErrorCategory::invalid_argument, "'axes'");
    expect_error(
        [] {
            BatchNormalization::from_config({{"momentum", "high"}});
        },
        ErrorCategory::invalid_argument, "momentum = \"high\"");
    expect_error(
        [] {
            BatchNormalization::from_config({{"axis", "last"}});
        },
        ErrorCategory::invalid_argument, "axis = \"last\"");
}

TEST(BatchNormalizationConfig, LargeUnsignedIntegersAreNotWrapped) {
    // 2^64 − 1 would become −1 (the last axis) if read as a signed int.
    expect_error(
        [] {
            BatchNormalization::from_config({{"axis", 18446744073709551615ULL}});
        },
        ErrorCategory::invalid_argument, "axis = 18446744073709551615");
    expect_error(
        [] {
            BatchNormalization::from_config({{"virtual_batch_size", 18446744073709551615ULL}});
        },
        ErrorCategory::invalid_argument, "virtual_batch_size");
}

TEST(BatchNormalizationConfig, UnknownClippingKeyIsRejectedWhateverItsValue) {
    const nlohmann::json config = {{"renorm", true}, {"renorm_clipping", {{"rmaxx", nullptr}}}};
    expect_error([&] { BatchNormalization::from_config(config); }, ErrorCategory::invalid_argument,
                 "'rmaxx'");
}

TEST(BatchNormalizationConfig, BatchInputShapeIsCheckedAndEnforced) {
    BatchNormalizationOptions options;
    options.batch_input_shape = {"a", 3};
    expect_error([&] { BatchNormalization layer(options); }, ErrorCategory::invalid_argument,
                 "batch_input_shape");
    options.batch_input_shape = {nullptr, 3};
    BatchNormalization layer(options);
    expect_error(
        [&] {
            layer.call(Tensor::filled({2, 4}, 1.0f));
        },
        ErrorCategory::shape_mismatch, "batch_input_shape");
    EXPECT_NO_THROW(layer.call(Tensor::filled({5, 3}, 1.0f)));
}

TEST(BatchNormalizationVariables, RegularizationLossesAndConstraints) {
    BatchNormalizationOptions options;
    options.gamma_regularizer = "l2";
    options.beta_regularizer = "l1";
    options.gamma_constraint = "non_neg";
    options.gamma_initializer = {{"class_name", "Constant"}, {"config", {{"value", -2.0}}}};
    BatchNormalization layer(options);
    layer.build({2, 3});
    // gamma = −2 ×3: l2 0.01·12 = 0.12; beta = 0: l1 0.
    const std::vector<double> losses = layer.regularization_losses();
    ASSERT_EQ(losses.size(), 2u);
    EXPECT_NEAR(losses[0], 0.12, 1e-7);
    EXPECT_EQ(losses[1], 0.0);
    layer.apply_constraints();
    EXPECT_THAT(values(layer.variable("gamma")), ElementsAre(0.0f, 0.0f, 0.0f));
}

TEST(BatchNormalizationVariables, SetVariableChecksTheShape) {
    BatchNormalization layer;
    layer.build({2, 3});
    expect_error([&] { layer.set_variable("gamma", Tensor::filled({4}, 1.0f)); },
                 ErrorCategory::shape_mismatch, "shape = [4]");
    expect_error([&] { layer.set_variable("gama", Tensor::filled({3}, 1.0f)); },
                 ErrorCategory::invalid_argument, "gama");
}

}  // namespace
}  // namespace keel
