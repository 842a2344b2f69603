// compile() turns a graph into chains: a straight line is one chain (no per-node scheduling), and
// branches become separate chains that may run concurrently.

#include "runtime/execution_plan.hpp"

#include <gtest/gtest.h>

#include "runtime/test_layers.hpp"

namespace keel::runtime {
namespace {

using keel::testing::ScaleLayer;
using keel::testing::SumLayer;

// Appends a node applying `layer` to `inputs`; returns its output value.
int add_node(Graph& graph, std::shared_ptr<Layer> layer, std::vector<int> inputs) {
    const int output = static_cast<int>(graph.values.size());
    graph.values.push_back({Shape{-1, 2}, static_cast<int>(graph.nodes.size()), layer->name()});
    GraphNode node;
    node.layer = layer;
    node.inputs = std::move(inputs);
    node.output = output;
    node.sources = {graph.layers.size()};
    graph.layers.push_back(std::move(layer));
    graph.nodes.push_back(std::move(node));
    return output;
}

Graph with_input() {
    Graph graph;
    graph.values.push_back({Shape{-1, 2}, -1, "x"});
    graph.inputs = {0};
    return graph;
}

TEST(ExecutionPlan, AStraightLineIsOneChain) {
    Graph graph = with_input();
    int value = 0;
    for (int i = 0; i < 5; ++i) {
        value = add_node(graph, std::make_shared<ScaleLayer>("line" + std::to_string(i)), {value});
    }
    graph.outputs = {value};
    const ExecutionPlan plan = make_execution_plan(std::move(graph));
    ASSERT_EQ(plan.chains.size(), 1U);
    EXPECT_EQ(plan.chains[0], (std::vector<int>{0, 1, 2, 3, 4}));
    EXPECT_EQ(plan.width, 1);
}

TEST(ExecutionPlan, BranchesAreSeparateChainsJoinedByDependencies) {
    Graph graph = with_input();
    const int stem = add_node(graph, std::make_shared<ScaleLayer>("stem"), {0});
    const int left = add_node(graph, std::make_shared<ScaleLayer>("left"), {stem});
    const int left2 = add_node(graph, std::make_shared<ScaleLayer>("left2"), {left});
    const int right = add_node(graph, std::make_shared<ScaleLayer>("right"), {stem});
    const int joined = add_node(graph, std::make_shared<SumLayer>("join"), {left2, right});
    graph.outputs = {joined};
    const ExecutionPlan plan = make_execution_plan(std::move(graph));
    // stem | left, left2 | right | join
    ASSERT_EQ(plan.chains.size(), 4U);
    EXPECT_EQ(plan.chains[1], (std::vector<int>{1, 2}));
    EXPECT_EQ(plan.chain_successors[0], (std::vector<int>{1, 2}));
    EXPECT_EQ(plan.chain_predecessor_count[3], 2);
    EXPECT_EQ(plan.width, 2);
    // The stem's value has two readers; the join's value is the output and kept.
    EXPECT_EQ(plan.value_consumer_count[static_cast<std::size_t>(stem)], 2);
    EXPECT_TRUE(plan.is_output[static_cast<std::size_t>(joined)]);
}

// A value that is a model output must survive its consumer, so the consumer starts a new chain.
TEST(ExecutionPlan, AnOutputValueEndsItsChain) {
    Graph graph = with_input();
    const int first = add_node(graph, std::make_shared<ScaleLayer>("first"), {0});
    const int second = add_node(graph, std::make_shared<ScaleLayer>("second"), {first});
    graph.outputs = {first, second};
    const ExecutionPlan plan = make_execution_plan(std::move(graph));
    EXPECT_EQ(plan.chains.size(), 2U);
}

// A node may overwrite an input only if that value is nobody else's: produced by a layer that
// returns storage of its own, not a model input or output, read once by the node, and not handed
// on by another reader (which would have to return storage of its own too).
TEST(ExecutionPlan, OnlyValuesNobodyElseHoldsMayBeOverwritten) {
    using keel::testing::StorageProbeLayer;
    Graph graph = with_input();
    const int a = add_node(graph, std::make_shared<StorageProbeLayer>("a"), {0});
    const int b = add_node(graph, std::make_shared<StorageProbeLayer>("b"), {a});
    const int c = add_node(graph, std::make_shared<StorageProbeLayer>("c"), {b});
    const int d = add_node(graph, std::make_shared<ScaleLayer>("d"), {b});
    const int e = add_node(graph, std::make_shared<SumLayer>("e"), {c, c});
    const int f = add_node(graph, std::make_shared<StorageProbeLayer>("f"), {d});
    const int g = add_node(graph, std::make_shared<SumLayer>("g"), {e, f});
    graph.outputs = {g, d};
    const ExecutionPlan plan = make_execution_plan(std::move(graph));
    const auto node_of = [&](int value) {
        return static_cast<std::size_t>(
            plan.graph.values[static_cast<std::size_t>(value)].producer);
    };
    EXPECT_EQ(plan.overwritable_inputs[node_of(a)], 0U);  // the caller's input
    EXPECT_EQ(plan.overwritable_inputs[node_of(b)], 1U);  // a: read by b alone
    EXPECT_EQ(plan.overwritable_inputs[node_of(c)], 0U);  // b: d may hand it on
    EXPECT_EQ(plan.overwritable_inputs[node_of(d)], 1U);  // b: c returns its own storage
    EXPECT_EQ(plan.overwritable_inputs[node_of(e)], 0U);  // c: read twice by e
    EXPECT_EQ(plan.overwritable_inputs[node_of(f)], 0U);  // d: a model output
    // g: e from a layer that may return an input as it is; f from a probe, read by g alone.
    EXPECT_EQ(plan.overwritable_inputs[node_of(g)], 2U);
}

}  // namespace
}  // namespace keel::runtime
