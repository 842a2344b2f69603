#include <keel/runtime/keras_model.hpp>

#include <algorithm>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/engine/npy.hpp>
#include <keel/layers/registry.hpp>

#include "runtime/compiled_model.hpp"

namespace keel {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kWhere = "load_keras_model";

std::string shorten(const json& value) {
    std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
    return text.size() > 80 ? text.substr(0, 77) + "..." : text;
}

// A reference to the tensor a layer produced: Keras' [layer name, node index, tensor index].
struct TensorReference {
    std::string layer;
    int node = 0;
    int tensor = 0;
};

// A node or tensor index: a JSON integer that fits in an int (a larger one must not wrap around
// to an index that exists).
bool is_index(const json& value) {
    return value.is_number_integer() && value >= 0 && value <= std::numeric_limits<int>::max();
}

TensorReference reference_from_history(const json& history, const std::string& where) {
    if (!history.is_array() || history.size() < 3 || !history[0].is_string() ||
        !is_index(history[1]) || !is_index(history[2])) {
        throw invalid_argument(where, "inbound tensor", shorten(history),
                               "[layer name, node index, tensor index]");
    }
    TensorReference reference{history[0].get<std::string>(), history[1].get<int>(),
                              history[2].get<int>()};
    if (reference.tensor != 0) {
        throw unsupported(
            where,
            "tensor index " + std::to_string(reference.tensor) + " of '" + reference.layer + "'",
            "every keel layer has exactly one output (tensor index 0)");
    }
    return reference;
}

// Keras kwargs of a call: keel accepts only those that change nothing (mask: null, ...).
void check_call_kwargs(const json& kwargs, const std::string& where) {
    if (kwargs.is_null()) return;
    if (!kwargs.is_object()) {
        throw invalid_argument(where, "inbound node kwargs", shorten(kwargs), "a JSON object");
    }
    for (const auto& [key, value] : kwargs.items()) {
        if (!value.is_null()) {
            throw unsupported(where, "call argument " + key + " = " + shorten(value),
                              "keel accepts only call arguments with the value null");
        }
    }
}

// One application of a layer: the tensors it reads.
std::vector<TensorReference> parse_inbound_node(const json& node, const std::string& where) {
    std::vector<TensorReference> references;
    if (node.is_object()) {
        // Keras 3: {"args": [tensor or [tensors...]], "kwargs": {...}}.
        for (const auto& [key, value] : node.items()) {
            if (key != "args" && key != "kwargs") {
                throw invalid_argument(where, "inbound node key", key, "\"args\" or \"kwargs\"");
            }
        }
        check_call_kwargs(node.value("kwargs", json()), where);
        const json args = node.value("args", json::array());
        std::vector<json> tensors;
        for (const json& arg : args) {
            if (arg.is_array()) {
                tensors.insert(tensors.end(), arg.begin(), arg.end());
            } else {
                tensors.push_back(arg);
            }
        }
        for (const json& tensor : tensors) {
            if (!tensor.is_object() || tensor.value("class_name", "") != "__keras_tensor__" ||
                !tensor.contains("config") || !tensor["config"].contains("keras_history")) {
                throw unsupported(where, "call argument " + shorten(tensor),
                                  "keel accepts only Keras tensors as positional arguments");
            }
            references.push_back(reference_from_history(tensor["config"]["keras_history"], where));
        }
    } else if (node.is_array()) {
        // TF 1.15 / Keras 2: [[layer name, node index, tensor index, kwargs], ...].
        for (const json& entry : node) {
            references.push_back(reference_from_history(entry, where));
            if (entry.size() > 3) check_call_kwargs(entry[3], where);
        }
    } else {
        throw invalid_argument(where, "inbound node", shorten(node),
                               "a list of [layer, node, tensor, kwargs] or {\"args\", \"kwargs\"}");
    }
    if (references.empty()) {
        throw invalid_argument(where, "inbound node", shorten(node), "at least one input tensor");
    }
    return references;
}

// input_layers / output_layers: [[name, node, tensor], ...], or one flat [name, node, tensor].
std::vector<TensorReference> parse_endpoints(const json& endpoints, const char* key) {
    const std::string where = std::string(kWhere) + ": config." + key;
    if (!endpoints.is_array() || endpoints.empty()) {
        throw invalid_argument(kWhere, std::string("config.") + key, shorten(endpoints),
                               "a non-empty list of [layer name, node index, tensor index]");
    }
    std::vector<TensorReference> references;
    if (endpoints[0].is_string()) {
        references.push_back(reference_from_history(endpoints, where));
    } else {
        for (const json& entry : endpoints)
            references.push_back(reference_from_history(entry, where));
    }
    return references;
}

struct LayerEntry {
    std::string class_name;
    std::string name;
    json config;
    std::vector<std::vector<TensorReference>> nodes;
};

LayerEntry parse_layer_entry(const json& entry, std::size_t index) {
    const std::string where =
        std::string(kWhere) + ": config.layers[" + std::to_string(index) + "]";
    if (!entry.is_object()) throw invalid_argument(where, "layer", shorten(entry), "a JSON object");
    LayerEntry layer;
    for (const auto& [key, value] : entry.items()) {
        if (key == "class_name") {
            if (!value.is_string()) throw invalid_argument(where, key, shorten(value), "a string");
            layer.class_name = value.get<std::string>();
        } else if (key == "config") {
            if (!value.is_object()) {
                throw invalid_argument(where, key, shorten(value), "a JSON object");
            }
            layer.config = value;
        } else if (key == "name") {
            if (!value.is_string()) throw invalid_argument(where, key, shorten(value), "a string");
            layer.name = value.get<std::string>();
        } else if (key != "inbound_nodes" && key != "module" && key != "registered_name" &&
                   key != "build_config") {
            throw invalid_argument(where, key, shorten(value),
                                   "class_name, config, name, inbound_nodes (and Keras' module, "
                                   "registered_name, build_config)");
        }
    }
    if (layer.class_name.empty() || layer.config.is_null()) {
        throw invalid_argument(where, "layer", shorten(entry), "\"class_name\" and \"config\"");
    }
    if (layer.name.empty() && layer.config.contains("name") && layer.config["name"].is_string()) {
        layer.name = layer.config["name"].get<std::string>();
    }
    if (layer.name.empty()) throw invalid_argument(where, "name", "(missing)", "the layer's name");
    layer.config["name"] = layer.name;
    const std::string layer_where = layer.class_name + " '" + layer.name + "'";
    const json inbound = entry.value("inbound_nodes", json::array());
    if (!inbound.is_array()) {
        throw invalid_argument(layer_where, "inbound_nodes", shorten(inbound), "a list of nodes");
    }
    for (const json& node : inbound) layer.nodes.push_back(parse_inbound_node(node, layer_where));
    return layer;
}

// The InputLayer's shape without the batch, and its batch size when fixed.
std::pair<Shape, std::optional<std::int64_t>> input_shape(const LayerEntry& entry) {
    const std::string where = "InputLayer '" + entry.name + "'";
    json shape;
    for (const auto& [key, value] : entry.config.items()) {
        if (key == "batch_input_shape" || key == "batch_shape") {
            shape = value;
        } else if (key == "sparse" || key == "ragged") {
            if (value != json(false) && !value.is_null()) {
                throw unsupported(where, key + " = " + shorten(value), "keel has dense tensors");
            }
        } else if (key == "dtype") {
            // A name, or a Keras 3 policy {"class_name": "DTypePolicy", "config": {"name"}}.
            const bool policy = value.is_object() && value.contains("config") &&
                                value["config"].is_object() && value["config"].contains("name");
            if ((policy ? value["config"]["name"] : value) != "float32") {
                throw unsupported(where, "dtype = " + shorten(value), "float32 model inputs");
            }
        } else if (key != "name" && key != "input_tensor" && key != "optional") {
            throw invalid_argument(where, key, shorten(value),
                                   "batch_input_shape/batch_shape, dtype, sparse, ragged, name");
        }
    }
    const bool valid =
        shape.is_array() && !shape.empty() &&
        std::all_of(shape.begin(), shape.end(), [](const json& dim) {
            return dim.is_null() || (dim.is_number_integer() && dim.get<std::int64_t>() >= 0);
        });
    if (!valid) {
        throw invalid_argument(where, "batch_input_shape", shorten(shape),
                               "a list of sizes (null = unknown) starting with the batch");
    }
    Shape dims;
    for (std::size_t i = 1; i < shape.size(); ++i) {
        if (shape[i].is_null()) {
            throw unsupported(where, "batch_input_shape = " + shorten(shape),
                              "known sizes for every dimension but the batch");
        }
        dims.push_back(shape[i].get<std::int64_t>());
    }
    std::optional<std::int64_t> batch;
    if (!shape[0].is_null()) batch = shape[0].get<std::int64_t>();
    return {dims, batch};
}

// Keras 3 writes {"args", "kwargs"} inbound nodes (and a keras.src module path for the model);
// Keras 2 and TF 1.15 write nested lists. The BatchNormalization of Keras 3 computes differently
// from TensorFlow's (no fused path), so the loader must know which one trained the model.
bool written_by_keras3(const json& document) {
    const std::string module = document.value("module", "");
    if (module.rfind("keras.src.", 0) == 0) return true;
    for (const json& layer : document["config"]["layers"]) {
        if (!layer.is_object()) continue;
        for (const json& node : layer.value("inbound_nodes", json::array())) {
            if (node.is_object()) return true;
        }
    }
    return false;
}

void load_weights(const Model& model, const fs::path& weights_dir) {
    for (const auto& layer : model.layers()) {
        for (const std::string& variable : layer->variable_names()) {
            const fs::path file = weights_dir / layer->name() / (variable + ".npy");
            const Shape expected = layer->variable(variable).shape();
            const std::string where = layer->class_name() + " '" + layer->name() + "'";
            if (!fs::is_regular_file(file)) {
                throw invalid_argument(where, "weight file", file.string() + " (missing)",
                                       "an .npy file of shape " + shape_to_string(expected) +
                                           " for variable '" + variable + "'");
            }
            const Tensor value = read_npy(file);
            if (value.shape() != expected) {
                throw shape_mismatch(where, "weight file " + file.string() + " shape",
                                     shape_to_string(value.shape()),
                                     shape_to_string(expected) + " (variable '" + variable + "')");
            }
            layer->set_variable(variable, value);
        }
    }
}

}  // namespace

Model load_keras_model(const json& document, const fs::path& weights_dir, const Engine& engine,
                       CompileOptions options) {
    if (!document.is_object() || !document.contains("class_name") || !document.contains("config")) {
        throw invalid_argument(kWhere, "model", shorten(document),
                               "{\"class_name\": \"Functional\" or \"Model\", \"config\": {...}}");
    }
    const json& class_name = document["class_name"];
    if (class_name != "Functional" && class_name != "Model") {
        throw unsupported(kWhere, "model class " + shorten(class_name),
                          "functional models (\"Functional\" or TF 1.15's \"Model\")");
    }
    const json& config = document["config"];
    if (!config.is_object() || !config.contains("layers") || !config["layers"].is_array()) {
        throw invalid_argument(
            kWhere, "config.layers",
            shorten(config.is_object() ? config.value("layers", json()) : config),
            "a list of layers");
    }
    const bool keras3 = written_by_keras3(document);
    std::vector<LayerEntry> entries;
    std::map<std::string, std::size_t> by_name;
    for (std::size_t i = 0; i < config["layers"].size(); ++i) {
        LayerEntry entry = parse_layer_entry(config["layers"][i], i);
        if (keras3 && entry.class_name == "BatchNormalization" &&
            !entry.config.contains("behavior")) {
            entry.config["behavior"] = "keras3";
        }
        if (!by_name.emplace(entry.name, entries.size()).second) {
            throw invalid_argument(kWhere, "layer name", "'" + entry.name + "' (twice)",
                                   "unique layer names");
        }
        entries.push_back(std::move(entry));
    }
    const std::vector<TensorReference> input_refs =
        parse_endpoints(config.value("input_layers", json()), "input_layers");
    const std::vector<TensorReference> output_refs =
        parse_endpoints(config.value("output_layers", json()), "output_layers");

    GraphBuilder builder(engine);
    std::map<std::pair<std::string, int>, SymbolicTensor> produced;
    std::vector<std::shared_ptr<Layer>> layers(entries.size());
    // Pending applications (entry, node index), resolved as their inputs become available; what
    // never resolves is a cycle or a reference to a node that does not exist.
    std::vector<std::pair<std::size_t, int>> pending;
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const LayerEntry& entry = entries[i];
        if (entry.class_name == "InputLayer") {
            const auto [shape, batch] = input_shape(entry);
            produced.emplace(std::make_pair(entry.name, 0),
                             builder.input(shape, entry.name, batch));
            continue;
        }
        for (std::size_t n = 0; n < entry.nodes.size(); ++n) {
            for (const TensorReference& reference : entry.nodes[n]) {
                if (!by_name.contains(reference.layer)) {
                    throw invalid_argument(entry.class_name + " '" + entry.name + "'",
                                           "inbound layer", "'" + reference.layer + "'",
                                           "the name of a layer of this model");
                }
            }
            pending.emplace_back(i, static_cast<int>(n));
        }
    }
    while (!pending.empty()) {
        std::vector<std::pair<std::size_t, int>> waiting;
        for (const auto& [index, node] : pending) {
            const LayerEntry& entry = entries[index];
            std::vector<SymbolicTensor> inputs;
            for (const TensorReference& reference : entry.nodes[static_cast<std::size_t>(node)]) {
                const auto found = produced.find({reference.layer, reference.node});
                if (found == produced.end()) break;
                inputs.push_back(found->second);
            }
            if (inputs.size() != entry.nodes[static_cast<std::size_t>(node)].size()) {
                waiting.emplace_back(index, node);
                continue;
            }
            if (!layers[index]) layers[index] = make_layer(entry.class_name, entry.config, engine);
            produced.emplace(std::make_pair(entry.name, node),
                             builder.apply(layers[index], inputs));
        }
        if (waiting.size() == pending.size()) {
            std::string names;
            for (const auto& [index, node] : waiting) {
                names += (names.empty() ? "'" : ", '") + entries[index].name + "'";
            }
            throw invalid_argument(kWhere, "inbound_nodes", "layers " + names,
                                   "an acyclic graph whose references name existing nodes (these "
                                   "layers wait on each other or on a node index that does not "
                                   "exist)");
        }
        pending = std::move(waiting);
    }

    const auto endpoint = [&](const TensorReference& reference, const char* key) {
        const auto found = produced.find({reference.layer, reference.node});
        if (found == produced.end()) {
            throw invalid_argument(
                kWhere, key, "'" + reference.layer + "' node " + std::to_string(reference.node),
                "a node of a layer of this model");
        }
        return found->second;
    };
    std::vector<SymbolicTensor> inputs;
    std::vector<SymbolicTensor> outputs;
    for (const TensorReference& reference : input_refs)
        inputs.push_back(endpoint(reference, "input_layers"));
    for (const TensorReference& reference : output_refs)
        outputs.push_back(endpoint(reference, "output_layers"));
    // Weights go in before compile: folded weights are derived from them lazily anyway, but a
    // missing file should fail before any compile work.
    Model model = builder.compile(inputs, outputs, CompileOptions{.optimize = false});
    load_weights(model, weights_dir);
    return options.optimize ? builder.compile(inputs, outputs, options) : model;
}

Model load_keras_model(const fs::path& config_file, const fs::path& weights_dir,
                       const Engine& engine, CompileOptions options) {
    std::ifstream stream(config_file);
    if (!stream) {
        throw invalid_argument(kWhere, "config file", config_file.string(), "a readable file");
    }
    // Bounded nesting: copying and printing JSON recurse once per level, so a file of a million
    // '[' would overflow the stack. Keras models nest a dozen levels.
    constexpr int kMaxDepth = 64;
    const json::parser_callback_t limit_depth = [&](int depth, json::parse_event_t, json&) {
        if (depth > kMaxDepth) {
            throw invalid_argument(
                kWhere, "config file", config_file.string(),
                "JSON nested at most " + std::to_string(kMaxDepth) + " levels deep");
        }
        return true;
    };
    json document;
    try {
        document = json::parse(stream, limit_depth);
    } catch (const json::exception& error) {
        throw invalid_argument(kWhere, "config file", config_file.string(),
                               std::string("valid JSON (") + error.what() + ")");
    }
    return load_keras_model(document, weights_dir, engine, options);
}

void save_keras_model(const Model& model, const fs::path& config_file,
                      const fs::path& weights_dir) {
    const runtime::CompiledModel& compiled = runtime::ModelAccess::compiled(model);
    const runtime::Graph& graph = compiled.training_plan.graph;
    json layers = json::array();
    // Node index of each value within its producing layer (a layer applied twice has two nodes).
    std::vector<int> node_index(graph.values.size(), 0);
    std::map<const Layer*, int> applications;
    for (int input : graph.inputs) {
        const runtime::GraphValue& value = graph.values[static_cast<std::size_t>(input)];
        json batch_shape = json::array();
        for (std::int64_t dim : value.shape) batch_shape.push_back(dim < 0 ? json() : json(dim));
        layers.push_back({{"class_name", "InputLayer"},
                          {"name", value.name},
                          {"config",
                           {{"batch_input_shape", batch_shape},
                            {"dtype", "float32"},
                            {"sparse", false},
                            {"name", value.name}}},
                          {"inbound_nodes", json::array()}});
    }
    std::map<const Layer*, std::size_t> entry_of;
    for (const runtime::GraphNode& node : graph.nodes) {
        const Layer& layer = *node.layer;
        node_index[static_cast<std::size_t>(node.output)] = applications[&layer]++;
        json inbound = json::array();
        for (int input : node.inputs) {
            const runtime::GraphValue& value = graph.values[static_cast<std::size_t>(input)];
            inbound.push_back(
                {value.name, node_index[static_cast<std::size_t>(input)], 0, json::object()});
        }
        const auto known = entry_of.find(&layer);
        if (known != entry_of.end()) {
            layers[known->second]["inbound_nodes"].push_back(inbound);
            continue;
        }
        entry_of.emplace(&layer, layers.size());
        layers.push_back({{"class_name", layer.class_name()},
                          {"name", layer.name()},
                          {"config", layer.get_config()},
                          {"inbound_nodes", json::array({inbound})}});
    }
    const auto endpoints = [&](const std::vector<int>& values) {
        json list = json::array();
        for (int v : values) {
            list.push_back({graph.values[static_cast<std::size_t>(v)].name,
                            node_index[static_cast<std::size_t>(v)], 0});
        }
        return list;
    };
    const json document = {{"class_name", "Functional"},
                           {"config",
                            {{"name", "model"},
                             {"layers", layers},
                             {"input_layers", endpoints(graph.inputs)},
                             {"output_layers", endpoints(graph.outputs)}}}};
    fs::create_directories(config_file.parent_path().empty() ? fs::path(".")
                                                             : config_file.parent_path());
    std::ofstream(config_file) << document.dump(2) << '\n';
    for (const auto& layer : compiled.layers) {
        for (const std::string& variable : layer->variable_names()) {
            fs::create_directories(weights_dir / layer->name());
            write_npy(weights_dir / layer->name() / (variable + ".npy"), layer->variable(variable));
        }
    }
}

}  // namespace keel
