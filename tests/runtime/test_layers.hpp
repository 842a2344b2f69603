#pragma once

// Layers that exist only for the runtime's tests: each makes one runtime behaviour observable.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>
#include <keel/layers/keras/initializers.hpp>
#include <keel/layers/layer.hpp>

namespace keel::testing {

// y = x·w with one trainable scalar w; a training call stages w ← w − (w − mean(x))·0.5, so tests
// can see whether a run's updates were committed.
class ScaleLayer final : public Layer {
  public:
    explicit ScaleLayer(std::string name, float initial = 2.0f)
        : Layer(std::move(name), true), initial_(initial) {}
    std::string class_name() const override { return "TestScale"; }
    nlohmann::json get_config() const override { return {{"name", name()}}; }
    Shape infer_output_shape(std::span<const Shape> shapes) const override {
        expect_input_count(shapes.size(), 1);
        return shapes[0];
    }
    Tensor forward(const ForwardContext& context) const override {
        const Tensor& x = context.inputs[0];
        const float w = context.variables.at(0).data_as<float>()[0];
        Tensor y(x.shape(), DType::f32);
        double sum = 0.0;
        for (std::int64_t i = 0; i < x.element_count(); ++i) {
            y.data_as<float>()[i] = x.get(i) * w;
            sum += x.get(i);
        }
        if (context.training && x.element_count() > 0) {
            const auto mean = static_cast<float>(sum / static_cast<double>(x.element_count()));
            context.updates.push_back({0, VariableUpdate::Kind::moving_average,
                                       Tensor::from_floats({1}, std::vector<float>{mean}), 0.5f});
        }
        return y;
    }

  private:
    void build_variables(std::span<const Shape>) override {
        add_variable("w", {1},
                     keras::get_initializer(nlohmann::json{{"class_name", "Constant"},
                                                           {"config", {{"value", initial_}}}},
                                            name(), "w"),
                     nullptr, nullptr, true);
    }
    float initial_;
};

// y = a + b + ... (elementwise, equal shapes).
class SumLayer final : public Layer {
  public:
    explicit SumLayer(std::string name) : Layer(std::move(name), true) {}
    std::string class_name() const override { return "TestSum"; }
    nlohmann::json get_config() const override { return {{"name", name()}}; }
    Shape infer_output_shape(std::span<const Shape> shapes) const override {
        for (const Shape& shape : shapes) {
            if (shape != shapes[0]) {
                throw shape_mismatch(describe(), "input shape", shape_to_string(shape),
                                     shape_to_string(shapes[0]));
            }
        }
        return shapes[0];
    }
    Tensor forward(const ForwardContext& context) const override {
        Tensor y(context.inputs[0].shape(), DType::f32);
        for (const Tensor& x : context.inputs) {
            for (std::int64_t i = 0; i < x.element_count(); ++i) y.data_as<float>()[i] += x.get(i);
        }
        return y;
    }

  private:
    void build_variables(std::span<const Shape>) override {}
};

// Identity that throws when the batch has `failing_batch` samples (a node failing mid-graph).
class FailingLayer final : public Layer {
  public:
    FailingLayer(std::string name, std::int64_t failing_batch)
        : Layer(std::move(name), true), failing_batch_(failing_batch) {}
    std::string class_name() const override { return "TestFailing"; }
    nlohmann::json get_config() const override { return {{"name", name()}}; }
    Shape infer_output_shape(std::span<const Shape> shapes) const override { return shapes[0]; }
    Tensor forward(const ForwardContext& context) const override {
        if (context.inputs[0].shape()[0] == failing_batch_) {
            throw invalid_argument(describe(), "batch", std::to_string(failing_batch_),
                                   "any other batch size (this test layer fails on purpose)");
        }
        return context.inputs[0].clone();
    }

  private:
    void build_variables(std::span<const Shape>) override {}
    std::int64_t failing_batch_;
};

// Identity that, in training, stages an update its variable cannot take (the wrong shape): the
// run succeeds node by node and fails only when the model commits.
class BadUpdateLayer final : public Layer {
  public:
    explicit BadUpdateLayer(std::string name) : Layer(std::move(name), true) {}
    std::string class_name() const override { return "TestBadUpdate"; }
    nlohmann::json get_config() const override { return {{"name", name()}}; }
    Shape infer_output_shape(std::span<const Shape> shapes) const override { return shapes[0]; }
    Tensor forward(const ForwardContext& context) const override {
        if (context.training) {
            context.updates.push_back(
                {0, VariableUpdate::Kind::assign, Tensor::filled({2}, 1.0f), 0.0f});
        }
        return context.inputs[0].clone();
    }

  private:
    void build_variables(std::span<const Shape>) override {
        add_variable("w", {1}, keras::get_initializer("zeros", name(), "w"), nullptr, nullptr,
                     true);
    }
};

// Identity that sleeps and records how many instances run forward() at the same time.
class ConcurrencyProbeLayer final : public Layer {
  public:
    ConcurrencyProbeLayer(std::string name, std::atomic<int>& running, std::atomic<int>& peak)
        : Layer(std::move(name), true), running_(running), peak_(peak) {}
    std::string class_name() const override { return "TestConcurrencyProbe"; }
    nlohmann::json get_config() const override { return {{"name", name()}}; }
    Shape infer_output_shape(std::span<const Shape> shapes) const override { return shapes[0]; }
    Tensor forward(const ForwardContext& context) const override {
        const int now = ++running_;
        int seen = peak_.load();
        while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        --running_;
        return context.inputs[0].clone();
    }

  private:
    void build_variables(std::span<const Shape>) override {}
    std::atomic<int>& running_;
    std::atomic<int>& peak_;
};

// Identity that returns a copy of its input (storage nobody else holds, so it says
// returns_exclusive_storage) and records where that copy lives and whether the run let it
// overwrite its input, for tests of in-place writes.
class StorageProbeLayer final : public Layer {
  public:
    explicit StorageProbeLayer(std::string name, std::chrono::milliseconds delay = {})
        : Layer(std::move(name), true), delay_(delay) {}
    std::string class_name() const override { return "TestStorageProbe"; }
    nlohmann::json get_config() const override { return {{"name", name()}}; }
    Shape infer_output_shape(std::span<const Shape> shapes) const override {
        expect_input_count(shapes.size(), 1);
        return shapes[0];
    }
    // Sleeps for `delay` first, so that a concurrent node may run while this one still holds its
    // input unread.
    Tensor forward(const ForwardContext& context) const override {
        if (delay_.count() > 0) std::this_thread::sleep_for(delay_);
        Tensor output = context.inputs[0].clone();
        output_data_.store(output.data());
        offered_.store(context.may_overwrite(0));
        return output;
    }
    bool returns_exclusive_storage() const noexcept override { return true; }

    const void* last_output_data() const { return output_data_.load(); }
    bool last_offered_its_input() const { return offered_.load(); }

  private:
    void build_variables(std::span<const Shape>) override {}
    std::chrono::milliseconds delay_;
    mutable std::atomic<const void*> output_data_{nullptr};
    mutable std::atomic<bool> offered_{false};
};

}  // namespace keel::testing
