#include <keel/runtime/model.hpp>

#include <keel/engine/error.hpp>

#include "runtime/compiled_model.hpp"

namespace keel {

Model::Model(std::shared_ptr<runtime::CompiledModel> compiled) : compiled_(std::move(compiled)) {}
Model::~Model() = default;
Model::Model(const Model&) = default;
Model& Model::operator=(const Model&) = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;

std::vector<Tensor> Model::run(std::span<const Tensor> inputs, const RunOptions& options) const {
    return runtime::run_model(*compiled_, inputs, options);
}

const std::vector<std::string>& Model::input_names() const noexcept {
    return compiled_->input_names;
}
const std::vector<std::string>& Model::output_names() const noexcept {
    return compiled_->output_names;
}
const std::vector<Shape>& Model::input_shapes() const noexcept { return compiled_->input_shapes; }
const std::vector<Shape>& Model::output_shapes() const noexcept { return compiled_->output_shapes; }

std::vector<std::shared_ptr<Layer>> Model::layers() const { return compiled_->layers; }

Layer& Model::layer(std::string_view name) const {
    for (const auto& layer : compiled_->layers) {
        if (layer->name() == name) return *layer;
    }
    std::string known;
    for (const auto& layer : compiled_->layers)
        known += (known.empty() ? "" : ", ") + layer->name();
    throw invalid_argument("Model", "layer", "'" + std::string(name) + "'",
                           "one of the model's layers: " + known);
}

bool Model::optimized() const noexcept { return compiled_->optimized; }
const std::vector<std::string>& Model::passes() const noexcept { return compiled_->passes; }

}  // namespace keel
