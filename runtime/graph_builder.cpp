#include <keel/runtime/graph_builder.hpp>

#include <algorithm>
#include <map>

#include <keel/engine/error.hpp>

#include "runtime/compiled_model.hpp"
#include "runtime/graph.hpp"

namespace keel {

struct GraphBuilder::Impl {
    Engine engine;
    runtime::Graph graph;
    std::map<std::string, const Layer*, std::less<>> layers_by_name;
    std::map<std::string, int, std::less<>> inputs_by_name;
};

GraphBuilder::GraphBuilder(Engine engine) : impl_(std::make_unique<Impl>()) {
    impl_->engine = std::move(engine);
}

GraphBuilder::~GraphBuilder() = default;

namespace {
constexpr const char* kWhere = "GraphBuilder";
}  // namespace

SymbolicTensor GraphBuilder::input(const Shape& shape, std::string name,
                                   std::optional<std::int64_t> batch_size) {
    for (std::int64_t dim : shape) {
        if (dim < 0) {
            throw invalid_argument(kWhere, "input shape", shape_to_string(shape),
                                   "known, non-negative sizes (the batch is not part of it)");
        }
    }
    if (batch_size && *batch_size < 0) {
        throw invalid_argument(kWhere, "batch_size", std::to_string(*batch_size),
                               "a non-negative batch size, or none for a dynamic batch");
    }
    if (name.empty()) name = "input_" + std::to_string(impl_->inputs_by_name.size() + 1);
    if (impl_->inputs_by_name.contains(name) || impl_->layers_by_name.contains(name)) {
        throw invalid_argument(kWhere, "input name", "'" + name + "'",
                               "a name no other input or layer of this graph has");
    }
    Shape full = {batch_size.value_or(-1)};
    full.insert(full.end(), shape.begin(), shape.end());
    const int value = static_cast<int>(impl_->graph.values.size());
    impl_->graph.values.push_back({full, -1, name});
    impl_->inputs_by_name.emplace(name, value);
    return SymbolicTensor(impl_.get(), value, full, name);
}

int GraphBuilder::value_of(const SymbolicTensor& tensor, const std::string& where) const {
    if (tensor.builder_ != impl_.get() || tensor.value_ < 0 ||
        tensor.value_ >= static_cast<int>(impl_->graph.values.size())) {
        throw invalid_argument(
            where, "tensor",
            tensor.name_.empty() ? std::string("(empty)") : "'" + tensor.name_ + "'",
            "a tensor made by this GraphBuilder (input() or apply())");
    }
    return tensor.value_;
}

SymbolicTensor GraphBuilder::apply(std::shared_ptr<Layer> layer,
                                   const std::vector<SymbolicTensor>& inputs) {
    if (!layer) throw invalid_argument(kWhere, "layer", "null", "a layer");
    const std::string where = layer->class_name() + " '" + layer->name() + "'";
    runtime::Graph& graph = impl_->graph;

    const auto known = impl_->layers_by_name.find(layer->name());
    if ((known != impl_->layers_by_name.end() && known->second != layer.get()) ||
        impl_->inputs_by_name.contains(layer->name())) {
        throw invalid_argument(kWhere, "layer name", "'" + layer->name() + "'",
                               "a name no other layer or input of this graph has");
    }
    if (inputs.empty()) {
        throw invalid_argument(where, "inputs", "none", "at least one tensor");
    }
    std::vector<int> values;
    std::vector<Shape> shapes;
    for (const SymbolicTensor& tensor : inputs) {
        values.push_back(value_of(tensor, where));
        shapes.push_back(graph.values[static_cast<std::size_t>(values.back())].shape);
    }
    // Keras builds a layer on its first application and checks the shapes of every later one.
    if (!layer->built()) layer->build(shapes);
    const Shape output_shape = layer->infer_output_shape(shapes);

    std::size_t source = graph.layers.size();
    for (std::size_t i = 0; i < graph.layers.size(); ++i) {
        if (graph.layers[i] == layer) source = i;
    }
    if (source == graph.layers.size()) graph.layers.push_back(layer);
    impl_->layers_by_name.emplace(layer->name(), layer.get());

    const int output = static_cast<int>(graph.values.size());
    runtime::GraphNode node;
    node.layer = layer;
    node.inputs = values;
    node.output = output;
    node.sources = {source};
    node.update_target = static_cast<int>(source);
    graph.nodes.push_back(std::move(node));
    graph.values.push_back({output_shape, static_cast<int>(graph.nodes.size() - 1), layer->name()});
    return SymbolicTensor(impl_.get(), output, output_shape, layer->name());
}

Model GraphBuilder::compile(const std::vector<SymbolicTensor>& inputs,
                            const std::vector<SymbolicTensor>& outputs,
                            CompileOptions options) const {
    const std::string where = "GraphBuilder::compile";
    const runtime::Graph& graph = impl_->graph;
    if (outputs.empty()) throw invalid_argument(where, "outputs", "none", "at least one tensor");

    runtime::Graph selected;
    for (const SymbolicTensor& tensor : inputs) {
        const int value = value_of(tensor, where);
        if (graph.values[static_cast<std::size_t>(value)].producer != -1) {
            throw invalid_argument(where, "inputs", "'" + tensor.name() + "'",
                                   "tensors made by input(), not by a layer");
        }
        if (std::find(selected.inputs.begin(), selected.inputs.end(), value) !=
            selected.inputs.end()) {
            throw invalid_argument(where, "inputs", "'" + tensor.name() + "' twice",
                                   "each input once");
        }
        selected.inputs.push_back(value);
    }
    for (const SymbolicTensor& tensor : outputs)
        selected.outputs.push_back(value_of(tensor, where));

    // Walk back from the outputs: the nodes they need, and the inputs those reach.
    std::vector<bool> needed(graph.nodes.size(), false);
    std::vector<bool> input_used(graph.values.size(), false);
    std::vector<int> stack(selected.outputs.begin(), selected.outputs.end());
    while (!stack.empty()) {
        const int value = stack.back();
        stack.pop_back();
        const runtime::GraphValue& graph_value = graph.values[static_cast<std::size_t>(value)];
        if (graph_value.producer == -1) {
            if (std::find(selected.inputs.begin(), selected.inputs.end(), value) ==
                selected.inputs.end()) {
                throw invalid_argument(where, "inputs", "a list without '" + graph_value.name + "'",
                                       "every input the outputs depend on (graph disconnected: '" +
                                           graph_value.name + "' feeds an output)");
            }
            input_used[static_cast<std::size_t>(value)] = true;
            continue;
        }
        const auto producer = static_cast<std::size_t>(graph_value.producer);
        if (needed[producer]) continue;
        needed[producer] = true;
        for (int input : graph.nodes[producer].inputs) stack.push_back(input);
    }
    for (int value : selected.inputs) {
        if (!input_used[static_cast<std::size_t>(value)]) {
            throw invalid_argument(where, "inputs",
                                   "'" + graph.values[static_cast<std::size_t>(value)].name + "'",
                                   "inputs that some output depends on (this one is dangling)");
        }
    }

    // Keep the needed nodes (application order is topological) and renumber values and layers.
    std::vector<int> value_map(graph.values.size(), -1);
    std::vector<int> layer_map(graph.layers.size(), -1);
    for (int value : selected.inputs) {
        value_map[static_cast<std::size_t>(value)] = static_cast<int>(selected.values.size());
        selected.values.push_back(graph.values[static_cast<std::size_t>(value)]);
    }
    for (std::size_t n = 0; n < graph.nodes.size(); ++n) {
        if (!needed[n]) continue;
        runtime::GraphNode node = graph.nodes[n];
        for (int& input : node.inputs) input = value_map[static_cast<std::size_t>(input)];
        for (std::size_t& source : node.sources) {
            int& mapped = layer_map[source];
            if (mapped == -1) {
                mapped = static_cast<int>(selected.layers.size());
                selected.layers.push_back(graph.layers[source]);
            }
            source = static_cast<std::size_t>(mapped);
        }
        node.update_target = static_cast<int>(node.sources.front());
        runtime::GraphValue value = graph.values[static_cast<std::size_t>(node.output)];
        value.producer = static_cast<int>(selected.nodes.size());
        value_map[static_cast<std::size_t>(node.output)] = static_cast<int>(selected.values.size());
        node.output = static_cast<int>(selected.values.size());
        selected.values.push_back(std::move(value));
        selected.nodes.push_back(std::move(node));
    }
    for (int& value : selected.inputs) value = value_map[static_cast<std::size_t>(value)];
    for (int& value : selected.outputs) value = value_map[static_cast<std::size_t>(value)];
    return Model(runtime::compile_model(impl_->engine, std::move(selected), options));
}

}  // namespace keel
