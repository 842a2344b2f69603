#pragma once

// Internal: what Add and Multiply share — Keras' shape rule for elementwise merges (restricted to
// equal shapes) and the kernel that folds the inputs left to right.

#include <cstdint>
#include <span>
#include <string_view>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>

namespace keel::merging {

enum class ElementwiseOperation { add, multiply };

// The output shape of merging `shapes` elementwise: at least one input, equal ranks, equal sizes
// where both are known (-1 is compatible with anything; the known size wins). Throws keel::Error
// naming `where` and both shapes.
Shape elementwise_output_shape(std::string_view where, std::span<const Shape> shapes);

// (((x0 op x1) op x2) ...) in f32. Inputs of another dtype are converted first; the shapes must be
// equal (checked, naming `where`). Bit i of `overwritable_inputs` lets the result go into
// inputs[i]'s storage instead of a new buffer (ForwardContext::overwritable_inputs); only inputs 0
// and 1 can take it, since the first pass reads only them.
Tensor merge_elementwise(const Engine& engine, std::string_view where,
                         ElementwiseOperation operation, std::span<const Tensor> inputs,
                         std::uint64_t overwritable_inputs = 0);

}  // namespace keel::merging
