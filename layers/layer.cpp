#include <keel/layers/layer.hpp>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

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

namespace {

// Lends Layer::call an update list for the duration of one call. The lists keep their capacity,
// so a thread's training calls after its first stage their updates without growing one. A thread
// normally needs one list; it makes another only when a call starts while an outer call on the
// same thread still holds one (a thread waiting for a parallel loop may run another layer's call
// meanwhile: TBB steals work).
class UpdateListLease {
  public:
    UpdateListLease() {
        Pool& pool = thread_pool();
        if (pool.in_use == pool.lists.size()) {
            pool.lists.push_back(std::make_unique<std::vector<VariableUpdate>>());
        }
        list_ = pool.lists[pool.in_use++].get();
    }
    // Leases nest (a call that started on this thread ends before the call it interrupted
    // resumes), so the last one taken is the first one given back. Whatever the call staged, and
    // did not commit because it failed, is released here.
    ~UpdateListLease() {
        list_->clear();
        --thread_pool().in_use;
    }
    UpdateListLease(const UpdateListLease&) = delete;
    UpdateListLease& operator=(const UpdateListLease&) = delete;

    std::vector<VariableUpdate>& operator*() const noexcept { return *list_; }
    std::vector<VariableUpdate>* operator->() const noexcept { return list_; }

  private:
    struct Pool {
        std::vector<std::unique_ptr<std::vector<VariableUpdate>>> lists;
        std::size_t in_use = 0;
    };
    static Pool& thread_pool() {
        thread_local Pool pool;
        return pool;
    }

    std::vector<VariableUpdate>* list_ = nullptr;
};

}  // namespace

Tensor Layer::call(std::span<const Tensor> inputs, const CallOptions& options) {
    if (!built_) {
        std::vector<Shape> shapes;
        for (const Tensor& input : inputs) shapes.push_back(input.shape());
        build(shapes);
    }
    const VariableSnapshot snapshot = variables_snapshot();
    const UpdateListLease updates;
    const ForwardContext context{inputs, *snapshot, options.training.value_or(false), *updates};
    Tensor output = forward(context);
    if (!updates->empty()) commit_own_updates(*updates);
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

// v − (v − value)·decay, three f32 operations as TensorFlow does. `out` may be `value`: each
// element is read before it is written.
void moving_average(const float* v, const float* value, float decay, std::int64_t count,
                    float* out) {
    for (std::int64_t i = 0; i < count; ++i) {
        const float difference = v[i] - value[i];
        const float delta = difference * decay;
        out[i] = v[i] - delta;
    }
}

// v·momentum + value·decay, three f32 operations. `out` may be `value`, as above.
void momentum_blend(const float* v, const float* value, float momentum, float decay,
                    std::int64_t count, float* out) {
    for (std::int64_t i = 0; i < count; ++i) {
        const float kept = v[i] * momentum;
        const float added = value[i] * decay;
        out[i] = kept + added;
    }
}

// Writes to `out` the value a moving_average or momentum_blend `update` gives a variable whose
// value before it is `variable`.
void blend(const Tensor& variable, const VariableUpdate& update, float* out) {
    const float* v = variable.data_as<float>();
    const float* value = update.value.data_as<float>();
    if (update.kind == VariableUpdate::Kind::moving_average) {
        moving_average(v, value, update.decay, variable.element_count(), out);
    } else {
        momentum_blend(v, value, update.momentum, update.decay, variable.element_count(), out);
    }
}

// The value `update` gives a variable whose value before it is `variable`. An update of a list the
// caller lets this consume (Update not const) that holds its value privately hands that value's
// storage over, the result computed in it; the update keeps a moved-from value.
template <typename Update>
Tensor updated_value(const Tensor& variable, Update& update) {
    if constexpr (!std::is_const_v<Update>) {
        if (update.value_is_private) {
            if (update.kind != VariableUpdate::Kind::assign) {
                blend(variable, update, update.value.template data_as<float>());
            }
            return std::move(update.value);
        }
    }
    if (update.kind == VariableUpdate::Kind::assign) return update.value;
    Tensor result = Tensor::uninitialized(variable.shape(), DType::f32);
    blend(variable, update, result.data_as<float>());
    return result;
}

// The variables after `updates`, applied in list order to `current`: a variable that an update
// names gets the value its updates give it (a private value of a consumed list without a copy),
// the others are shared with `current`.
template <typename Update>
std::shared_ptr<std::vector<Tensor>> updated_values(const std::vector<Tensor>& current,
                                                    std::span<Update> updates) {
    auto next = std::make_shared<std::vector<Tensor>>();
    next->reserve(current.size());
    for (std::size_t index = 0; index < current.size(); ++index) {
        std::optional<Tensor> value;
        for (Update& update : updates) {
            if (update.variable == index) {
                value = updated_value(value ? *value : current[index], update);
            }
        }
        if (value) {
            next->push_back(std::move(*value));
        } else {
            next->push_back(current[index]);
        }
    }
    return next;
}

}  // namespace

void Layer::commit_updates(std::span<const VariableUpdate> updates) {
    const std::unique_lock lock = lock_variables();
    publish_variables(prepare_updates(updates));
}

void Layer::commit_own_updates(std::span<VariableUpdate> updates) {
    const std::unique_lock lock = lock_variables();
    // Checked before anything is consumed; then only running out of memory can throw, which
    // publishes nothing either.
    const VariableSnapshot current = state_->current.load();
    check_updates(updates, *current);
    publish_variables(updated_values(*current, updates));
}

std::unique_lock<std::mutex> Layer::lock_variables() const {
    return std::unique_lock(state_->write_mutex);
}

void Layer::check_updates(std::span<const VariableUpdate> updates,
                          const std::vector<Tensor>& current) const {
    for (const VariableUpdate& update : updates) {
        if (update.variable >= current.size()) {
            throw internal_error(describe(), "staged update of variable #" +
                                                 std::to_string(update.variable) +
                                                 ", which does not exist");
        }
        const Tensor& target = current[update.variable];
        if (update.value.shape() != target.shape() || update.value.dtype() != DType::f32) {
            throw internal_error(describe(), "staged update of variable '" +
                                                 state_->definitions[update.variable].name +
                                                 "' does not match its shape");
        }
    }
}

VariableSnapshot Layer::prepare_updates(std::span<const VariableUpdate> updates) const {
    const VariableSnapshot current = state_->current.load();
    check_updates(updates, *current);
    return updated_values(*current, updates);
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
