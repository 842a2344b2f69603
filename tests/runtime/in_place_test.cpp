// In-place writes (ForwardContext::overwritable_inputs): a node writes its output into an input's
// buffer only when nobody can see that buffer any more — never the caller's inputs, never a value
// the caller gets back, never one that a later or concurrent node still reads — and the results
// stay exactly those of a run that allocates every output.

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <keel/engine/engine.hpp>
#include <keel/layers/activation/activation.hpp>
#include <keel/layers/activation/relu.hpp>
#include <keel/layers/convolutional/conv2d.hpp>
#include <keel/layers/merging/add.hpp>
#include <keel/runtime/graph_builder.hpp>

#include "runtime/test_layers.hpp"

namespace keel {
namespace {

using testing::StorageProbeLayer;

// Values on a grid of 1/8 in [−1, 1]: every convolution below sums exactly (products are multiples
// of 1/64, sums far below 2^24/64), so all the models compute the same numbers bit for bit
// however they group the work.
Tensor grid(const Shape& shape, int seed) {
    Tensor tensor(shape, DType::f32);
    for (std::int64_t i = 0; i < tensor.element_count(); ++i) {
        tensor.data_as<float>()[i] = static_cast<float>(((i * 37 + seed * 11) % 17) - 8) / 8.0f;
    }
    return tensor;
}

bool bit_identical(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && a.dtype() == b.dtype() &&
           std::memcmp(a.data(), b.data(), a.byte_size()) == 0;
}

constexpr std::int64_t kChannels = 3;

// A 3x3 'same' Conv2D of kChannels filters with grid weights.
std::shared_ptr<Conv2D> conv(GraphBuilder& graph, const SymbolicTensor& x, const std::string& name,
                             int seed, SymbolicTensor& y, nlohmann::json activation = nullptr) {
    Conv2DOptions options;
    options.name = name;
    options.filters = kChannels;
    options.kernel_size = {3, 3};
    options.padding = "same";
    options.activation = std::move(activation);
    auto layer = std::make_shared<Conv2D>(options);
    y = graph.apply(layer, {x});
    layer->set_variable("kernel", grid({3, 3, x.shape().back(), kChannels}, seed));
    layer->set_variable("bias", grid({kChannels}, seed + 1));
    return layer;
}

std::shared_ptr<Add> add(const std::string& name) {
    AddOptions options;
    options.name = name;
    return std::make_shared<Add>(options);
}

std::shared_ptr<ReLU> relu(const std::string& name) {
    ReLUOptions options;
    options.name = name;
    return std::make_shared<ReLU>(options);
}

// The residual block the perf suite's ResNet repeats, with a probe producing the residual r:
//   r = probe(conv_a(x)),  y = relu(conv_b(x) + r)
struct ResidualBlock {
    GraphBuilder graph;
    SymbolicTensor x;
    SymbolicTensor r;
    SymbolicTensor y;
    std::shared_ptr<StorageProbeLayer> probe;

    ResidualBlock() {
        x = graph.input({6, 5, kChannels}, "x");
        SymbolicTensor a;
        conv(graph, x, "conv_a", 1, a, "relu");
        probe = std::make_shared<StorageProbeLayer>("residual");
        r = graph.apply(probe, {a});
        SymbolicTensor c;
        conv(graph, x, "conv_b", 3, c);
        y = graph.apply(relu("relu_out"), {graph.apply(add("add_residual"), {c, r})});
    }
};

TEST(InPlace, TheResidualBufferBecomesTheOutputWhenNobodyElseReadsIt) {
    ResidualBlock block;
    const Model optimized = block.graph.compile({block.x}, {block.y});
    const Model plain = block.graph.compile({block.x}, {block.y}, {.optimize = false});
    ASSERT_EQ(optimized.passes(),
              std::vector<std::string>{"fuse_residual_add:conv_b+add_residual+relu_out"});
    const Tensor input = grid({2, 6, 5, kChannels}, 5);
    const Tensor expected = plain.run({input})[0];
    const Tensor output = optimized.run({input})[0];
    EXPECT_EQ(output.data(), block.probe->last_output_data());
    EXPECT_TRUE(block.probe->last_offered_its_input());  // conv_a's output, read by it alone
    EXPECT_TRUE(bit_identical(output, expected));
}

// Without the fusion, the Add writes into its first input's buffer and the ReLU into the Add's.
TEST(InPlace, AddAndReluReuseTheirInputsInAGraphAsWritten) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({4, 4, kChannels}, "x");
    auto first = std::make_shared<StorageProbeLayer>("first");
    auto second = std::make_shared<StorageProbeLayer>("second");
    const SymbolicTensor a = graph.apply(first, {x});
    const SymbolicTensor b = graph.apply(second, {x});
    const SymbolicTensor y = graph.apply(relu("relu_sum"), {graph.apply(add("sum"), {a, b})});
    const Model model = graph.compile({x}, {y}, {.optimize = false});
    const Tensor input = grid({2, 4, 4, kChannels}, 6);
    const Tensor output = model.run({input})[0];
    EXPECT_EQ(output.data(), first->last_output_data());
    ASSERT_EQ(output.shape(), input.shape());
    for (std::int64_t i = 0; i < input.element_count(); ++i) {
        EXPECT_EQ(output.get(i), std::max(0.0f, input.get(i) + input.get(i))) << i;
    }
}

// The caller's tensors are the caller's: a residual that is a model input (owned or a view of
// caller memory) is copied, never written.
TEST(InPlace, ACallersInputIsNeverOverwritten) {
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({5, 5, kChannels}, "x");
    const SymbolicTensor shortcut = graph.input({5, 5, kChannels}, "shortcut");
    SymbolicTensor c;
    conv(graph, x, "conv_input_residual", 7, c);
    const SymbolicTensor y =
        graph.apply(relu("relu_input_residual"), {graph.apply(add("add_input"), {c, shortcut})});
    const Model optimized = graph.compile({x, shortcut}, {y});
    const Model plain = graph.compile({x, shortcut}, {y}, {.optimize = false});
    ASSERT_EQ(optimized.passes().size(), 1U);

    const Tensor input = grid({2, 5, 5, kChannels}, 8);
    const Tensor owned = grid({2, 5, 5, kChannels}, 9);
    std::vector<float> caller_memory = owned.to_floats();
    const Tensor view = Tensor::view(caller_memory.data(), owned.shape(), DType::f32);
    const Tensor owned_before = owned.clone();
    const Tensor expected = plain.run({input, owned})[0];
    for (const Tensor& residual : {owned, view}) {
        const Tensor output = optimized.run({input, residual})[0];
        EXPECT_TRUE(bit_identical(output, expected));
        EXPECT_NE(output.data(), residual.data());
        EXPECT_TRUE(bit_identical(residual, owned_before));
    }
    EXPECT_TRUE(bit_identical(plain.run({input, owned})[0], expected));
    EXPECT_TRUE(bit_identical(owned, owned_before));
    EXPECT_TRUE(bit_identical(input, grid({2, 5, 5, kChannels}, 8)));
}

TEST(InPlace, AResidualTheCallerGetsBackIsNeverOverwritten) {
    ResidualBlock block;
    const Model optimized = block.graph.compile({block.x}, {block.y, block.r});
    const Model plain = block.graph.compile({block.x}, {block.y, block.r}, {.optimize = false});
    ASSERT_EQ(optimized.passes().size(), 1U);
    const Tensor input = grid({2, 6, 5, kChannels}, 10);
    const std::vector<Tensor> expected = plain.run({input});
    const std::vector<Tensor> outputs = optimized.run({input});
    EXPECT_NE(outputs[0].data(), outputs[1].data());
    EXPECT_TRUE(bit_identical(outputs[0], expected[0]));
    EXPECT_TRUE(bit_identical(outputs[1], expected[1]));
}

// A node that reads the residual after the fused one: the residual must survive it.
TEST(InPlace, AResidualALaterNodeReadsIsCopiedFirst) {
    ResidualBlock block;
    const SymbolicTensor z = block.graph.apply(add("add_again"), {block.y, block.r});
    const Model optimized = block.graph.compile({block.x}, {z});
    const Model plain = block.graph.compile({block.x}, {z}, {.optimize = false});
    ASSERT_EQ(optimized.passes().size(), 1U);
    const Tensor input = grid({3, 6, 5, kChannels}, 11);
    EXPECT_TRUE(bit_identical(optimized.run({input})[0], plain.run({input})[0]));
}

// With two chains at once, the fused node may run while another branch has not read the residual
// yet (it sleeps first), although that branch comes first in the graph's order: the run must see
// that reader still pending and leave the buffer alone, so that branch copies the residual as it
// was. (A rule fixed at compile time, "the last reader in graph order", would get this wrong.)
TEST(InPlace, AResidualAConcurrentBranchStillReadsIsLeftAlone) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 2, .inter_op_concurrency = 2});
    GraphBuilder graph(engine);
    const SymbolicTensor x = graph.input({6, 5, kChannels}, "x");
    SymbolicTensor a;
    conv(graph, x, "branch_conv_a", 12, a, "relu");
    auto probe = std::make_shared<StorageProbeLayer>("branch_residual");
    const SymbolicTensor r = graph.apply(probe, {a});
    auto slow = std::make_shared<StorageProbeLayer>("slow_reader", std::chrono::milliseconds(60));
    const SymbolicTensor late = graph.apply(slow, {r});
    SymbolicTensor c;
    conv(graph, x, "branch_conv_b", 14, c);
    const SymbolicTensor y =
        graph.apply(relu("branch_relu"), {graph.apply(add("branch_add"), {c, r})});
    const Model optimized = graph.compile({x}, {y, late});
    const Model plain = graph.compile({x}, {y, late}, {.optimize = false});
    ASSERT_EQ(optimized.passes().size(), 1U);

    const Tensor input = grid({2, 6, 5, kChannels}, 16);
    const std::vector<Tensor> expected = plain.run({input});
    for (int run = 0; run < 3; ++run) {
        const std::vector<Tensor> outputs = optimized.run({input});
        EXPECT_TRUE(bit_identical(outputs[0], expected[0])) << run;
        EXPECT_TRUE(bit_identical(outputs[1], expected[1])) << run;
    }
}

// The layers' side of the protocol, called directly: in place exactly when allowed.
TEST(InPlace, LayersWriteIntoAnInputOnlyWhenAllowed) {
    const VariableSnapshot no_variables = std::make_shared<const std::vector<Tensor>>();
    std::vector<VariableUpdate> updates;
    const auto forward = [&](const Layer& layer, const std::vector<Tensor>& inputs,
                             std::uint64_t overwritable) {
        const ForwardContext context{inputs, *no_variables, false, updates, overwritable};
        return layer.forward(context);
    };
    const Tensor a = grid({2, 3, 4}, 17);
    const Tensor b = grid({2, 3, 4}, 18);
    const Tensor c = grid({2, 3, 4}, 19);

    ReLUOptions relu_options;
    relu_options.name = "direct_relu";
    ReLU relu_layer(relu_options);
    Activation tanh_layer(ActivationOptions{.activation = "tanh", .name = "direct_tanh"});
    for (const Layer* layer : std::vector<const Layer*>{&relu_layer, &tanh_layer}) {
        const Tensor mine = a.clone();
        const Tensor kept = forward(*layer, {mine}, 0);
        EXPECT_NE(kept.data(), mine.data());
        EXPECT_TRUE(bit_identical(mine, a));
        const Tensor reused = forward(*layer, {mine}, 1);
        EXPECT_EQ(reused.data(), mine.data());
        EXPECT_TRUE(bit_identical(reused, kept)) << layer->name();
    }

    Add sum(AddOptions{.name = "direct_add"});
    const Tensor expected = forward(sum, {a, b}, 0);
    for (std::int64_t i = 0; i < a.element_count(); ++i) {
        EXPECT_EQ(expected.get(i), a.get(i) + b.get(i));
    }
    {
        const Tensor first = a.clone();
        const Tensor second = b.clone();
        const Tensor reused = forward(sum, {first, second}, 2);
        EXPECT_EQ(reused.data(), second.data());
        EXPECT_TRUE(bit_identical(reused, expected));
        EXPECT_TRUE(bit_identical(first, a));
    }
    {
        // The fold writes the output before it reads a third input: that one is never reused.
        const Tensor third = c.clone();
        const Tensor result = forward(sum, {a, b, third}, 4);
        EXPECT_NE(result.data(), third.data());
        EXPECT_TRUE(bit_identical(third, c));
        for (std::int64_t i = 0; i < a.element_count(); ++i) {
            EXPECT_EQ(result.get(i), (a.get(i) + b.get(i)) + c.get(i));
        }
    }
    {
        // A single input comes back as the Add's own copy unless it may be reused.
        const Tensor single = a.clone();
        EXPECT_NE(forward(sum, {single}, 0).data(), single.data());
        EXPECT_EQ(forward(sum, {single}, 1).data(), single.data());
        EXPECT_TRUE(bit_identical(forward(sum, {single}, 0), a));
    }
    EXPECT_TRUE(relu_layer.returns_exclusive_storage());
    EXPECT_TRUE(sum.returns_exclusive_storage());
}

}  // namespace
}  // namespace keel
