#include "runtime/graph.hpp"

namespace keel::runtime {

std::shared_ptr<const std::vector<Tensor>> DerivedVariables::get(
    std::span<const VariableSnapshot> sources) const {
    const std::shared_ptr<const Entry> cached = cached_.load();
    if (cached && std::equal(cached->sources.begin(), cached->sources.end(), sources.begin(),
                             sources.end())) {
        return cached->values;
    }
    auto values = std::make_shared<const std::vector<Tensor>>(derive_(sources));
    cached_.store(std::make_shared<const Entry>(
        Entry{std::vector<VariableSnapshot>(sources.begin(), sources.end()), values}));
    return values;
}

std::vector<std::vector<int>> Graph::consumers() const {
    std::vector<std::vector<int>> result(values.size());
    for (std::size_t n = 0; n < nodes.size(); ++n) {
        for (int value : nodes[n].inputs)
            result[static_cast<std::size_t>(value)].push_back(static_cast<int>(n));
    }
    return result;
}

}  // namespace keel::runtime
