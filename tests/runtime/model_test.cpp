// The graph runtime end to end with BatchNormalization and test-only layers: shapes inferred at
// build, results equal to eager layer calls, training commits all-or-nothing, batch sizes that
// change between runs, and the errors a user sees.

#include <keel/runtime/graph_builder.hpp>
#include <keel/runtime/model.hpp>

#include <algorithm>
#include <cstring>

#include <gtest/gtest.h>

#include <keel/engine/error.hpp>
#include <keel/layers/normalization/batch_normalization.hpp>

#include "runtime/reliability_support.hpp"
#include "runtime/test_layers.hpp"

namespace keel {
namespace {

using testing::FailingLayer;
using testing::ScaleLayer;
using testing::SumLayer;

Tensor ramp(const Shape& shape, float step, float offset = 0.0f) {
    Tensor tensor(shape, DType::f32);
    for (std::int64_t i = 0; i < tensor.element_count(); ++i) {
        tensor.data_as<float>()[i] = offset + step * static_cast<float>(i % 97);
    }
    return tensor;
}

bool bit_identical(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && a.dtype() == b.dtype() &&
           std::memcmp(a.data(), b.data(), a.byte_size()) == 0;
}

std::string message_of(const std::function<void()>& action) {
    try {
        action();
    } catch (const Error& error) {
        return error.what();
    }
    return "(no error)";
}

std::shared_ptr<BatchNormalization> batch_normalization(const std::string& name) {
    BatchNormalizationOptions options;
    options.name = name;
    options.momentum = 0.9;
    return std::make_shared<BatchNormalization>(options);
}

TEST(GraphBuilder, InfersShapesWithAnUnknownBatch) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({4, 5, 3}, "image");
    EXPECT_EQ(x.shape(), (Shape{-1, 4, 5, 3}));
    const SymbolicTensor y = graph.apply(batch_normalization("bn_shapes"), {x});
    EXPECT_EQ(y.shape(), (Shape{-1, 4, 5, 3}));
    const Model model = graph.compile({x}, {y});
    EXPECT_EQ(model.input_names(), std::vector<std::string>{"image"});
    EXPECT_EQ(model.output_names(), std::vector<std::string>{"bn_shapes"});
    EXPECT_EQ(model.layer("bn_shapes").variable("gamma").shape(), (Shape{3}));
}

// Each construction error names what is wrong, so a user can find the line that caused it.
TEST(GraphBuilder, ConstructionErrorsNameTheLayerAndShapes) {
    GraphBuilder graph;
    const SymbolicTensor a = graph.input({4, 3}, "a");
    const SymbolicTensor b = graph.input({4, 2}, "b");
    EXPECT_NE(message_of([&] {
                  graph.apply(std::make_shared<SumLayer>("sum"), {a, b});
              }).find("[-1, 4, 2]"),
              std::string::npos);

    graph.apply(std::make_shared<ScaleLayer>("twice"), {a});
    EXPECT_NE(message_of([&] {
                  graph.apply(std::make_shared<ScaleLayer>("twice"), {a});
              }).find("layer name = 'twice'"),
              std::string::npos);
    EXPECT_NE(message_of([&] { graph.input({1}, "a"); }).find("input name = 'a'"),
              std::string::npos);

    GraphBuilder other;
    const SymbolicTensor foreign = other.input({4, 3}, "foreign");
    EXPECT_NE(message_of([&] {
                  graph.apply(std::make_shared<ScaleLayer>("s2"), {foreign});
              }).find("a tensor made by this GraphBuilder"),
              std::string::npos);
}

TEST(GraphBuilder, CompileRejectsDisconnectedAndDanglingInputs) {
    GraphBuilder graph;
    const SymbolicTensor a = graph.input({3}, "a");
    const SymbolicTensor b = graph.input({3}, "b");
    const SymbolicTensor sum = graph.apply(std::make_shared<SumLayer>("sum_ab"), {a, b});
    EXPECT_NE(message_of([&] { graph.compile({a}, {sum}); }).find("graph disconnected: 'b'"),
              std::string::npos);
    const SymbolicTensor only_a = graph.apply(std::make_shared<ScaleLayer>("scale_a"), {a});
    EXPECT_NE(message_of([&] {
                  graph.compile({a, b}, {only_a});
              }).find("dangling"),
              std::string::npos);
    EXPECT_NO_THROW(graph.compile({a, b}, {sum, only_a}));
}

TEST(Model, InferenceEqualsEagerCallsBitForBit) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({6, 6, 8}, "x");
    auto bn = batch_normalization("bn_eager");
    auto scale = std::make_shared<ScaleLayer>("scale_eager", 1.5f);
    const SymbolicTensor y = graph.apply(scale, {graph.apply(bn, {x})});
    const Model model = graph.compile({x}, {y});
    model.layer("bn_eager").set_variable("moving_mean", ramp({8}, 0.25f));
    model.layer("bn_eager").set_variable("moving_variance", ramp({8}, 0.5f, 1.0f));

    const Tensor input = ramp({2, 6, 6, 8}, 0.125f, -3.0f);
    const Tensor expected = scale->call(bn->call(input));
    EXPECT_TRUE(bit_identical(model.run({input})[0], expected));
}

TEST(Model, TrainingRunCommitsTheSameUpdatesAsEagerTraining) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({5, 4}, "x");
    const SymbolicTensor y = graph.apply(batch_normalization("bn_train"), {x});
    const Model model = graph.compile({x}, {y});
    auto twin = batch_normalization("bn_train_twin");

    const Tensor input = ramp({3, 5, 4}, 0.5f, 2.0f);
    const Tensor output = model.run({input}, {.training = true})[0];
    const Tensor expected = twin->call(input, {.training = true});
    EXPECT_TRUE(bit_identical(output, expected));
    EXPECT_TRUE(bit_identical(model.layer("bn_train").variable("moving_mean"),
                              twin->variable("moving_mean")));
    EXPECT_TRUE(bit_identical(model.layer("bn_train").variable("moving_variance"),
                              twin->variable("moving_variance")));
}

// Issue 8, promise 2 (docs/reliability.md): a training run that throws at any node leaves every
// variable bit-identical, including those of layers that ran successfully before the failure or
// side by side with it; the next run works. The failing node sits before everything, after the
// branches merged, at the very end, or in one of two branches running concurrently
// (inter_op_concurrency 2) while the other stages updates.
//
//   x → [first] → bn_a ─→ scale ──────────────┐
//                      └→ bn_c → [branch] ─────┴→ sum → [middle] → bn_b → [last]
enum class FailingNode { first, middle, last, branch };

std::string place_name(FailingNode place) {
    static const char* const kNames[] = {"first", "middle", "last", "branch"};
    return kNames[static_cast<int>(place)];
}

Model model_failing_at(const Engine& engine, FailingNode place, const std::string& prefix) {
    GraphBuilder graph(engine);
    const auto failing_here = [&](FailingNode here, SymbolicTensor value) {
        return place == here
                   ? graph.apply(std::make_shared<FailingLayer>(prefix + "_fails_on_3", 3), {value})
                   : value;
    };
    const SymbolicTensor x = graph.input({4}, "x");
    const SymbolicTensor a =
        graph.apply(batch_normalization(prefix + "_bn_a"), {failing_here(FailingNode::first, x)});
    const SymbolicTensor scaled = graph.apply(std::make_shared<ScaleLayer>(prefix + "_scale"), {a});
    const SymbolicTensor c = graph.apply(batch_normalization(prefix + "_bn_c"), {a});
    const SymbolicTensor sum = graph.apply(std::make_shared<SumLayer>(prefix + "_sum"),
                                           {scaled, failing_here(FailingNode::branch, c)});
    const SymbolicTensor y = graph.apply(batch_normalization(prefix + "_bn_b"),
                                         {failing_here(FailingNode::middle, sum)});
    return graph.compile({x}, {failing_here(FailingNode::last, y)});
}

class FailedTrainingRun : public ::testing::TestWithParam<FailingNode> {};

TEST_P(FailedTrainingRun, ChangesNoVariableAndTheNextRunWorks) {
    const std::string prefix = "failing_" + place_name(GetParam());
    const Engine engine(ThreadingOptions{.intra_op_threads = 2, .inter_op_concurrency = 2});
    const Model model = model_failing_at(engine, GetParam(), prefix);
    const testing::SavedVariables before = testing::save_variables(model);
    const Tensor probe = ramp({2, 4}, 0.75f, -1.0f);
    const Tensor inference_before = model.run({probe})[0];

    for (int attempt = 0; attempt < 3; ++attempt) {
        EXPECT_THROW(model.run({ramp({3, 4}, 1.0f)}, {.training = true}), Error);
        EXPECT_EQ(testing::differing_variables(testing::save_variables(model), before),
                  std::vector<std::string>{})
            << "after failed run " << attempt;
    }
    EXPECT_TRUE(bit_identical(model.run({probe})[0], inference_before));

    model.run({ramp({2, 4}, 1.0f)}, {.training = true});
    const std::vector<std::string> changed =
        testing::differing_variables(testing::save_variables(model), before);
    // bn_b and bn_c read normalized values (mean 0), so their variance shows the update.
    for (const char* variable :
         {"_bn_a/moving_mean", "_bn_b/moving_variance", "_bn_c/moving_variance", "_scale/w"}) {
        EXPECT_NE(std::find(changed.begin(), changed.end(), prefix + variable), changed.end())
            << prefix + variable << " was not updated by the successful run";
    }
}

INSTANTIATE_TEST_SUITE_P(Places, FailedTrainingRun,
                         ::testing::Values(FailingNode::first, FailingNode::middle,
                                           FailingNode::last, FailingNode::branch),
                         [](const auto& param_info) { return place_name(param_info.param); });

// A shape that turns out wrong mid-graph, in a real layer's own run-time check: a
// BatchNormalization with virtual_batch_size 2 (Keras: the batch must be a multiple of it) after a
// layer that already staged an update, given a batch of 3. Nothing changes; runs with a fitting
// batch work before and after.
TEST(FailedTrainingRunShape, WrongShapeMidGraphChangesNoVariable) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({6}, "features");
    const SymbolicTensor scaled = graph.apply(std::make_shared<ScaleLayer>("virtual_scale"), {x});
    BatchNormalizationOptions options;
    options.name = "virtual_bn";
    options.virtual_batch_size = 2;
    const Model model =
        graph.compile({x}, {graph.apply(std::make_shared<BatchNormalization>(options), {scaled})});

    model.run({ramp({4, 6}, 0.5f)}, {.training = true});
    const testing::SavedVariables before = testing::save_variables(model);
    EXPECT_THROW(model.run({ramp({3, 6}, 0.5f)}, {.training = true}), Error);
    EXPECT_EQ(testing::differing_variables(testing::save_variables(model), before),
              std::vector<std::string>{});
    model.run({ramp({2, 6}, 0.25f)}, {.training = true});
    EXPECT_EQ(testing::differing_variables(testing::save_variables(model), before),
              (std::vector<std::string>{"virtual_scale/w", "virtual_bn/moving_mean",
                                        "virtual_bn/moving_variance"}));
}

// A commit is all or nothing even when it fails itself: the BatchNormalization before the layer
// whose update cannot be applied keeps its statistics.
TEST(Model, ACommitThatFailsPublishesNothing) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({4}, "x");
    const SymbolicTensor y = graph.apply(std::make_shared<testing::BadUpdateLayer>("bad_update"),
                                         {graph.apply(batch_normalization("bn_commit"), {x})});
    const Model model = graph.compile({x}, {y});
    const Tensor mean_before = model.layer("bn_commit").variable("moving_mean");
    EXPECT_THROW(model.run({ramp({3, 4}, 1.0f)}, {.training = true}), Error);
    EXPECT_TRUE(bit_identical(model.layer("bn_commit").variable("moving_mean"), mean_before));
    EXPECT_NO_THROW(model.run({ramp({3, 4}, 1.0f)}));
}

TEST(Model, BatchSizeMayChangeBetweenRuns) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({3, 2}, "x");
    auto bn = batch_normalization("bn_batches");
    const Model model = graph.compile({x}, {graph.apply(bn, {x})});
    for (std::int64_t batch : {1, 7, 2, 0}) {
        const Tensor input = ramp({batch, 3, 2}, 0.5f);
        const Tensor output = model.run({input})[0];
        EXPECT_EQ(output.shape(), input.shape());
        if (batch > 0) {
            EXPECT_TRUE(bit_identical(output, bn->call(input)));
        }
    }
}

TEST(Model, RunErrorsNameTheInput) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({3, 2}, "pixels");
    const Model model = graph.compile({x}, {graph.apply(batch_normalization("bn_err"), {x})});
    EXPECT_NE(message_of([&] { model.run(std::vector<Tensor>{}); }).find("1 (one per model input"),
              std::string::npos);
    EXPECT_NE(message_of([&] {
                  model.run({ramp({2, 3, 5}, 1.0f)});
              }).find("input 'pixels' shape = [2, 3, 5]; expected [-1, 3, 2]"),
              std::string::npos);
    EXPECT_NE(message_of([&] { model.layer("nope"); }).find("bn_err"), std::string::npos);
}

// A value feeding two layers and a layer applied twice (shared weights) both work.
TEST(Model, DiamondAndSharedLayerGraphs) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({4}, "x");
    auto shared = std::make_shared<ScaleLayer>("shared", 3.0f);
    const SymbolicTensor left = graph.apply(shared, {x});
    const SymbolicTensor right = graph.apply(shared, {left});
    const SymbolicTensor y =
        graph.apply(std::make_shared<SumLayer>("sum_diamond"), {left, right, x});
    const Model model = graph.compile({x}, {y, left});
    const std::vector<Tensor> outputs = model.run({ramp({2, 4}, 1.0f)});
    ASSERT_EQ(outputs.size(), 2U);
    for (std::int64_t i = 0; i < 8; ++i) {
        const float value = static_cast<float>(i % 97);
        EXPECT_EQ(outputs[0].get(i), value * 3.0f + value * 9.0f + value);
        EXPECT_EQ(outputs[1].get(i), value * 3.0f);
    }
    EXPECT_EQ(model.layers().size(), 2U);
}

}  // namespace
}  // namespace keel
