#include "runtime/execution_plan.hpp"

#include <algorithm>
#include <set>

namespace keel::runtime {

ExecutionPlan make_execution_plan(Graph graph) {
    ExecutionPlan plan;
    const std::vector<std::vector<int>> consumers = graph.consumers();
    const std::size_t node_count = graph.nodes.size();

    plan.value_consumer_count.assign(graph.values.size(), 0);
    plan.is_output.assign(graph.values.size(), false);
    for (std::size_t v = 0; v < graph.values.size(); ++v) {
        plan.value_consumer_count[v] = static_cast<int>(consumers[v].size());
    }
    for (int output : graph.outputs) plan.is_output[static_cast<std::size_t>(output)] = true;

    const auto exclusive = [&](int node) {
        return graph.nodes[static_cast<std::size_t>(node)].layer->returns_exclusive_storage();
    };
    plan.overwritable_inputs.assign(node_count, 0);
    for (std::size_t n = 0; n < node_count; ++n) {
        const std::vector<int>& inputs = graph.nodes[n].inputs;
        for (std::size_t i = 0; i < inputs.size() && i < 64; ++i) {
            const auto value = static_cast<std::size_t>(inputs[i]);
            const int producer = graph.values[value].producer;
            const std::vector<int>& readers = consumers[value];
            if (producer < 0 || plan.is_output[value] || !exclusive(producer) ||
                std::count(inputs.begin(), inputs.end(), inputs[i]) != 1 ||
                !std::all_of(readers.begin(), readers.end(), [&](int reader) {
                    return reader == static_cast<int>(n) || exclusive(reader);
                })) {
                continue;
            }
            plan.overwritable_inputs[n] |= std::uint64_t{1} << i;
        }
    }

    // A node continues its producer's chain when it reads only that producer's value and is its
    // only consumer: nothing else can run between them, so scheduling them apart buys nothing.
    std::vector<int> chain_of(node_count, -1);
    for (std::size_t n = 0; n < node_count; ++n) {
        const GraphNode& node = graph.nodes[n];
        int extends = -1;
        std::set<int> distinct_inputs(node.inputs.begin(), node.inputs.end());
        if (distinct_inputs.size() == 1) {
            const int value = node.inputs.front();
            const int producer = graph.values[static_cast<std::size_t>(value)].producer;
            const bool sole_consumer =
                consumers[static_cast<std::size_t>(value)].size() == node.inputs.size();
            if (producer >= 0 && sole_consumer &&
                !plan.is_output[static_cast<std::size_t>(value)]) {
                const int chain = chain_of[static_cast<std::size_t>(producer)];
                if (plan.chains[static_cast<std::size_t>(chain)].back() == producer)
                    extends = chain;
            }
        }
        if (extends == -1) {
            extends = static_cast<int>(plan.chains.size());
            plan.chains.emplace_back();
        }
        plan.chains[static_cast<std::size_t>(extends)].push_back(static_cast<int>(n));
        chain_of[n] = extends;
    }

    const std::size_t chain_count = plan.chains.size();
    plan.chain_successors.assign(chain_count, {});
    plan.chain_predecessor_count.assign(chain_count, 0);
    for (std::size_t c = 0; c < chain_count; ++c) {
        std::set<int> predecessors;
        for (int n : plan.chains[c]) {
            for (int value : graph.nodes[static_cast<std::size_t>(n)].inputs) {
                const int producer = graph.values[static_cast<std::size_t>(value)].producer;
                if (producer < 0) continue;
                const int chain = chain_of[static_cast<std::size_t>(producer)];
                if (chain != static_cast<int>(c)) predecessors.insert(chain);
            }
        }
        plan.chain_predecessor_count[c] = static_cast<int>(predecessors.size());
        for (int predecessor : predecessors) {
            plan.chain_successors[static_cast<std::size_t>(predecessor)].push_back(
                static_cast<int>(c));
        }
    }

    // Width: the largest antichain is costly to compute; the number of chains without
    // predecessors or with a shared predecessor is a sufficient bound for sizing concurrency.
    int roots = 0;
    std::size_t widest_fan_out = 1;
    for (std::size_t c = 0; c < chain_count; ++c) {
        if (plan.chain_predecessor_count[c] == 0) ++roots;
        widest_fan_out = std::max(widest_fan_out, plan.chain_successors[c].size());
    }
    plan.width =
        static_cast<int>(std::max<std::size_t>(static_cast<std::size_t>(roots), widest_fan_out));
    plan.graph = std::move(graph);
    return plan;
}

}  // namespace keel::runtime
