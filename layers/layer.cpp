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

namespace keel {

struct Layer::Variable {
    std::string name;
    Tensor value;
    bool trainable = false;
    std::shared_ptr<const keras::Regularizer> regularizer;
    std::shared_ptr<const keras::Constraint> constraint;
};

Layer::Layer(std::string name, bool trainable) : name_(std::move(name)), trainable_(trainable) {}

Layer::~Layer() = default;

std::string Layer::describe() const { return class_name() + " '" + name_ + "'"; }

void Layer::build(const Shape& input_shape) {
    if (built_) {
        throw invalid_argument(describe(), "build", shape_to_string(input_shape),
                               "a layer that is not built yet (it was built before)");
    }
    // A throwing build leaves the layer unbuilt and without variables, so it can be built again.
    variables_.clear();
    try {
        build_variables(input_shape);
    } catch (...) {
        variables_.clear();
        throw;
    }
    built_ = true;
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
    auto variable = std::make_unique<Variable>();
    variable->name = std::move(name);
    variable->value = std::move(value);
    variable->trainable = trainable;
    variable->regularizer = std::move(regularizer);
    variable->constraint = std::move(constraint);
    variables_.push_back(std::move(variable));
}

Layer::Variable& Layer::find(std::string_view name) const {
    for (const auto& variable : variables_) {
        if (variable->name == name) return *variable;
    }
    std::string known;
    for (const auto& variable : variables_) {
        known += (known.empty() ? "" : ", ") + variable->name;
    }
    throw invalid_argument(describe(), "variable", std::string(name),
                           known.empty() ? std::string("a built layer (it has no variables yet)")
                                         : "one of: " + known);
}

std::vector<std::string> Layer::variable_names() const {
    std::vector<std::string> names;
    for (const auto& variable : variables_) names.push_back(variable->name);
    return names;
}

std::vector<std::string> Layer::trainable_variable_names() const {
    std::vector<std::string> names;
    if (!trainable_) return names;  // Keras excludes every weight of a frozen layer
    for (const auto& variable : variables_) {
        if (variable->trainable) names.push_back(variable->name);
    }
    return names;
}

bool Layer::has_variable(std::string_view name) const {
    return std::any_of(variables_.begin(), variables_.end(),
                       [&](const auto& variable) { return variable->name == name; });
}

const Tensor& Layer::variable(std::string_view name) const { return find(name).value; }

void Layer::set_variable(std::string_view name, const Tensor& value) {
    Variable& variable = find(name);
    if (value.shape() != variable.value.shape()) {
        throw shape_mismatch(describe(), "variable '" + variable.name + "' shape",
                             shape_to_string(value.shape()),
                             shape_to_string(variable.value.shape()));
    }
    variable.value = value.dtype() == DType::f32 ? value.clone() : value.to(DType::f32);
}

void Layer::assign_variable(std::string_view name, Tensor value) {
    find(name).value = std::move(value);
}

std::vector<double> Layer::regularization_losses() const {
    std::vector<double> losses;
    for (const auto& variable : variables_) {
        if (variable->regularizer) losses.push_back((*variable->regularizer)(variable->value));
    }
    return losses;
}

void Layer::apply_constraints() {
    // Project into temporaries first so a throwing constraint changes nothing.
    std::vector<std::pair<Variable*, Tensor>> projected;
    for (const auto& variable : variables_) {
        if (variable->constraint) {
            projected.emplace_back(variable.get(), (*variable->constraint)(
                                                       variable->value, describe() + " variable '" +
                                                                            variable->name + "'"));
        }
    }
    for (auto& [variable, value] : projected) variable->value = std::move(value);
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
