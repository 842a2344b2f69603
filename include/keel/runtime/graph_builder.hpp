#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>
#include <keel/layers/layer.hpp>
#include <keel/runtime/model.hpp>

namespace keel {

class GraphBuilder;

// A tensor of a graph under construction (Keras' KerasTensor): a value a layer will produce, or
// a model input. Cheap to copy; valid only with the GraphBuilder that made it.
class SymbolicTensor {
  public:
    SymbolicTensor() = default;
    // -1 marks a dimension unknown until run time (the batch, unless the input fixed it).
    const Shape& shape() const noexcept { return shape_; }
    // The producing layer's name, or the input's name.
    const std::string& name() const noexcept { return name_; }

  private:
    friend class GraphBuilder;
    SymbolicTensor(const void* builder, int value, Shape shape, std::string name)
        : builder_(builder), value_(value), shape_(std::move(shape)), name_(std::move(name)) {}

    const void* builder_ = nullptr;
    int value_ = -1;
    Shape shape_;
    std::string name_;
};

struct CompileOptions {
    // Graph rewrites for inference (folding BatchNormalization into the layer before it, fusing
    // activations into convolutions and Dense). Training-mode runs never use them.
    bool optimize = true;
};

// Keras' functional API in C++:
//
//   keel::GraphBuilder graph;
//   auto x = graph.input({32, 32, 3}, "image");
//   auto y = graph.apply(std::make_shared<keel::Conv2D>(keel::Conv2DOptions{...}), {x});
//   keel::Model model = graph.compile({x}, {y});
//
// apply() builds the layer (creating its variables) on first use and infers the output shape, so
// a shape error surfaces at the line that caused it, naming the layer and the shapes.
class GraphBuilder {
  public:
    explicit GraphBuilder(Engine engine = default_engine());
    ~GraphBuilder();
    GraphBuilder(const GraphBuilder&) = delete;
    GraphBuilder& operator=(const GraphBuilder&) = delete;

    // keras.Input: `shape` excludes the batch dimension; `batch_size` fixes it (unknown if unset).
    // An empty name becomes "input_1", "input_2", ...
    SymbolicTensor input(const Shape& shape, std::string name = {},
                         std::optional<std::int64_t> batch_size = std::nullopt);

    // Applies `layer` to `inputs` (Keras' layer(inputs)). A layer may be applied more than once
    // (shared weights); two different layers may not share a name.
    SymbolicTensor apply(std::shared_ptr<Layer> layer, const std::vector<SymbolicTensor>& inputs);

    // keras.Model(inputs, outputs). Every output must be computable from `inputs` alone, and
    // every input must be used by some output. The builder stays usable afterwards.
    Model compile(const std::vector<SymbolicTensor>& inputs,
                  const std::vector<SymbolicTensor>& outputs, CompileOptions options = {}) const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;

    int value_of(const SymbolicTensor& tensor, const std::string& where) const;
};

}  // namespace keel
