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

}  // namespace
}  // namespace keel::runtime
