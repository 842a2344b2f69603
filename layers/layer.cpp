#include <keel/layers/layer.hpp>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/layers/keras/constraints.hpp>
#include <keel/layers/keras/initializers.hpp>
#include <keel/layers/keras/regularizers.hpp>

#include "engine/atomic_shared_ptr.hpp"

namespace keel {

struct Layer::Definition {
    std::string name;
    Shape shape;
    bool trainable = false;
    std::shared_ptr<const keras::Regularizer> regularizer;
    std::shared_ptr<const keras::Constraint> constraint;
};

struct Layer::State {
    std::vector<Definition> definitions;
    // Values created by add_variable during build, published when build succeeds.
    std::vector<Tensor> building;
    AtomicSharedPtr<const std::vector<Tensor>> current{
        std::make_shared<const std::vector<Tensor>>()};
    // Serializes writers (commits, set_variable, constraints); readers only load `current`.
    std::mutex write_mutex;

    std::size_t find(std::string_view name, const std::string& where) const {
        for (std::size_t i = 0; i < definitions.size(); ++i) {
            if (definitions[i].name == name) return i;
        }
        std::string known;
        for (const auto& definition : definitions) {
            known += (known.empty() ? "" : ", ") + definition.name;
        }
        throw invalid_argument(where, "variable", std::string(name),
                               known.empty()
                                   ? std::string("a built layer (it has no variables yet)")
                                   : "one of: " + known);
    }
};

Layer::Layer(std::string name, bool trainable)
    : name_(std::move(name)), trainable_(trainable), state_(std::make_unique<State>()) {}

Layer::~Layer() = default;

std::string Layer::describe() const { return class_name() + " '" + name_ + "'"; }

void Layer::expect_input_count(std::size_t given, std::size_t count) const {
    if (given != count) {
        throw invalid_argument(describe(), "inputs", std::to_string(given) + " tensors",
                               std::to_string(count) + (count == 1 ? " tensor" : " tensors"));
    }
}

void Layer::build(std::span<const Shape> input_shapes) {
    if (built_) {
        std::string shapes;
        for (const Shape& shape : input_shapes) {
            shapes += (shapes.empty() ? "" : ", ") + shape_to_string(shape);
        }
        throw invalid_argument(describe(), "build", shapes,
                               "a layer that is not built yet (it was built before)");
    }
    // A throwing build leaves the layer unbuilt and without variables, so it can be built again.
    state_->definitions.clear();
    state_->building.clear();
    try {
        build_variables(input_shapes);
    } catch (...) {
        state_->definitions.clear();
        state_->building.clear();
        throw;
    }
    state_->current.store(std::make_shared<const std::vector<Tensor>>(std::move(state_->building)));
    state_->building.clear();
    built_ = true;
}

Tensor Layer::call(std::span<const Tensor> inputs, const CallOptions& options) {
    if (!built_) {
        std::vector<Shape> shapes;
        for (const Tensor& input : inputs) shapes.push_back(input.shape());
        build(shapes);
    }
    const VariableSnapshot snapshot = variables_snapshot();
    std::vector<VariableUpdate> updates;
    const ForwardContext context{inputs, *snapshot, options.training.value_or(false), updates};
    Tensor output = forward(context);
    if (!updates.empty()) commit_updates(updates);
    return output;
}

void Layer::add_variable(std::string name, const Shape& shape,
                         std::shared_ptr<const keras::Initializer> initializer,
                         std::shared_ptr<const keras::Regularizer> regularizer,
                         std::shared_ptr<const keras::Constraint> constraint, bool trainable) {
    const std::string where = describe() + " variable '" + name + "'";
    if (!initializer) {
        // Keras' add_weight falls back to glorot_uniform for a None initializer.
        initializer = keras::get_initializer("glorot_uniform", where, "initializer");
    }
    Tensor value = (*initializer)(shape, where);
    if (value.dtype() != DType::f32) value = value.to(DType::f32);
    state_->definitions.push_back(Definition{std::move(name), shape, trainable,
                                             std::move(regularizer), std::move(constraint)});
    state_->building.push_back(std::move(value));
}

std::vector<std::string> Layer::variable_names() const {
    std::vector<std::string> names;
    for (const auto& definition : state_->definitions) names.push_back(definition.name);
    return names;
}

std::vector<std::string> Layer::trainable_variable_names() const {
    std::vector<std::string> names;
    if (!trainable_) return names;  // Keras excludes every weight of a frozen layer
    for (const auto& definition : state_->definitions) {
        if (definition.trainable) names.push_back(definition.name);
    }
    return names;
}

bool Layer::has_variable(std::string_view name) const {
    return std::any_of(state_->definitions.begin(), state_->definitions.end(),
                       [&](const Definition& definition) { return definition.name == name; });
}

std::size_t Layer::variable_index(std::string_view name) const {
    return state_->find(name, describe());
}

Tensor Layer::variable(std::string_view name) const {
    const std::size_t index = variable_index(name);
    return (*variables_snapshot())[index];
}

VariableSnapshot Layer::variables_snapshot() const { return state_->current.load(); }

void Layer::set_variable(std::string_view name, const Tensor& value) {
    const std::size_t index = variable_index(name);
    const Definition& definition = state_->definitions[index];
    if (value.shape() != definition.shape) {
        throw shape_mismatch(describe(), "variable '" + definition.name + "' shape",
                             shape_to_string(value.shape()), shape_to_string(definition.shape));
    }
    Tensor converted = value.dtype() == DType::f32 ? value.clone() : value.to(DType::f32);
    std::lock_guard lock(state_->write_mutex);
    auto next = std::make_shared<std::vector<Tensor>>(*state_->current.load());
    (*next)[index] = std::move(converted);
    state_->current.store(std::move(next));
}

namespace {

Tensor moving_average(const Tensor& variable, const Tensor& value, float decay) {
    Tensor result = Tensor::uninitialized(variable.shape(), DType::f32);
    const float* v = variable.data_as<float>();
    const float* x = value.data_as<float>();
    float* out = result.data_as<float>();
    for (std::int64_t i = 0; i < variable.element_count(); ++i) {
        const float difference = v[i] - x[i];
        const float delta = difference * decay;
        out[i] = v[i] - delta;
    }
    return result;
}

Tensor momentum_blend(const Tensor& variable, const Tensor& value, float momentum, float decay) {
    Tensor result = Tensor::uninitialized(variable.shape(), DType::f32);
    const float* v = variable.data_as<float>();
    const float* x = value.data_as<float>();
    float* out = result.data_as<float>();
    for (std::int64_t i = 0; i < variable.element_count(); ++i) {
        const float kept = v[i] * momentum;
        const float added = x[i] * decay;
        out[i] = kept + added;
    }
    return result;
}

}  // namespace

void Layer::commit_updates(std::span<const VariableUpdate> updates) {
    const std::unique_lock lock = lock_variables();
    publish_variables(prepare_updates(updates));
}

std::unique_lock<std::mutex> Layer::lock_variables() const {
    return std::unique_lock(state_->write_mutex);
}

VariableSnapshot Layer::prepare_updates(std::span<const VariableUpdate> updates) const {
    auto next = std::make_shared<std::vector<Tensor>>(*state_->current.load());
    for (const VariableUpdate& update : updates) {
        if (update.variable >= next->size()) {
            throw internal_error(describe(), "staged update of variable #" +
                                                 std::to_string(update.variable) +
                                                 ", which does not exist");
        }
        Tensor& target = (*next)[update.variable];
        if (update.value.shape() != target.shape() || update.value.dtype() != DType::f32) {
            throw internal_error(describe(), "staged update of variable '" +
                                                 state_->definitions[update.variable].name +
                                                 "' does not match its shape");
        }
        switch (update.kind) {
            case VariableUpdate::Kind::assign:
                target = update.value;
                break;
            case VariableUpdate::Kind::moving_average:
                target = moving_average(target, update.value, update.decay);
                break;
            case VariableUpdate::Kind::momentum_blend:
                target = momentum_blend(target, update.value, update.momentum, update.decay);
                break;
        }
    }
    return next;
}

void Layer::publish_variables(VariableSnapshot next) noexcept {
    state_->current.store(std::move(next));
}

std::vector<double> Layer::regularization_losses() const {
    std::vector<double> losses;
    const VariableSnapshot values = variables_snapshot();
    for (std::size_t i = 0; i < state_->definitions.size(); ++i) {
        const auto& regularizer = state_->definitions[i].regularizer;
        if (regularizer) losses.push_back((*regularizer)((*values)[i]));
    }
    return losses;
}

void Layer::apply_constraints() {
    std::lock_guard lock(state_->write_mutex);
    auto next = std::make_shared<std::vector<Tensor>>(*state_->current.load());
    // Project into the copy so a throwing constraint changes nothing.
    for (std::size_t i = 0; i < state_->definitions.size(); ++i) {
        const Definition& definition = state_->definitions[i];
        if (definition.constraint) {
            (*next)[i] = (*definition.constraint)(
                (*next)[i], describe() + " variable '" + definition.name + "'");
        }
    }
    state_->current.store(std::move(next));
}

std::string unique_layer_name(std::string_view base) {
    static std::mutex mutex;
    static std::map<std::string, int, std::less<>> counts;
    std::lock_guard lock(mutex);
    int& count = counts[std::string(base)];
    const std::string name =
        count == 0 ? std::string(base) : std::string(base) + "_" + std::to_string(count);
    ++count;
    return name;
}

}  // namespace keel
