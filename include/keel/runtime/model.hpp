#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <keel/engine/tensor.hpp>
#include <keel/layers/layer.hpp>

namespace keel {

namespace runtime {
struct CompiledModel;
struct ModelAccess;
}  // namespace runtime

struct RunOptions {
    // Keras' training argument: BatchNormalization uses batch statistics and, when the whole run
    // succeeds, its moving statistics are updated in one model-wide commit.
    bool training = false;
};

// A compiled graph. run() is safe to call from any number of threads at once: each run reads one
// immutable snapshot of all variables taken when it starts; a training run's updates are applied
// to the current variables only after every node succeeded, all layers together. Cheap to copy:
// copies share the compiled graph and the layers.
class Model {
  public:
    ~Model();
    Model(const Model&);
    Model& operator=(const Model&);
    Model(Model&&) noexcept;
    Model& operator=(Model&&) noexcept;

    // One tensor per model input, in compile() order; returns one per output. Inputs of the
    // wrong count, rank, size or an unsupported dtype are a keel::Error and change nothing.
    std::vector<Tensor> run(std::span<const Tensor> inputs, const RunOptions& options = {}) const;
    std::vector<Tensor> run(const std::vector<Tensor>& inputs,
                            const RunOptions& options = {}) const {
        return run(std::span<const Tensor>(inputs), options);
    }

    const std::vector<std::string>& input_names() const noexcept;
    const std::vector<std::string>& output_names() const noexcept;
    // Shapes as compiled (-1 = unknown until run time).
    const std::vector<Shape>& input_shapes() const noexcept;
    const std::vector<Shape>& output_shapes() const noexcept;

    // Every layer, in topological order; by name (keel::Error listing the names if unknown).
    std::vector<std::shared_ptr<Layer>> layers() const;
    Layer& layer(std::string_view name) const;

    // Whether inference runs use the rewritten graph, and the rewrites applied to it, e.g.
    // "fold_batch_normalization:conv1+bn1" (empty when none matched).
    bool optimized() const noexcept;
    const std::vector<std::string>& passes() const noexcept;

  private:
    friend class GraphBuilder;
    friend struct runtime::ModelAccess;
    explicit Model(std::shared_ptr<runtime::CompiledModel> compiled);
    std::shared_ptr<runtime::CompiledModel> compiled_;
};

}  // namespace keel
