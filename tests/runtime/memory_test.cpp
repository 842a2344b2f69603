// The memory promise: a value's buffer is released as soon as its last reader has run, so
// a long chain holds a small, constant number of activations, not one per layer.

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include <keel/runtime/graph_builder.hpp>

#include "runtime/test_layers.hpp"

namespace keel {
namespace {

// Identity that copies its input and records the heap in use while it runs (glibc serves
// allocations this large with mmap, which mallinfo2 counts in hblkhd).
class HeapProbeLayer final : public Layer {
  public:
    HeapProbeLayer(std::string name, std::atomic<std::size_t>& peak)
        : Layer(std::move(name), true), peak_(peak) {}
    std::string class_name() const override { return "TestHeapProbe"; }
    nlohmann::json get_config() const override { return {{"name", name()}}; }
    Shape infer_output_shape(std::span<const Shape> shapes) const override { return shapes[0]; }
    Tensor forward(const ForwardContext& context) const override {
        Tensor output = context.inputs[0].clone();
        const struct mallinfo2 info = ::mallinfo2();
        const std::size_t in_use = info.uordblks + info.hblkhd;
        std::size_t seen = peak_.load();
        while (in_use > seen && !peak_.compare_exchange_weak(seen, in_use)) {
        }
        return output;
    }

  private:
    void build_variables(std::span<const Shape>) override {}
    std::atomic<std::size_t>& peak_;
};

TEST(MemoryPlan, AFiftyLayerChainHoldsAFewActivationsNotFifty) {
    constexpr std::int64_t kElements = 1 << 20;  // 4 MiB of f32 per activation
    constexpr std::size_t kActivationBytes = kElements * sizeof(float);
    std::atomic<std::size_t> peak{0};
    GraphBuilder graph;
    const SymbolicTensor x = graph.input({kElements}, "x");
    SymbolicTensor y = x;
    for (int i = 0; i < 50; ++i) {
        y = graph.apply(std::make_shared<HeapProbeLayer>("probe" + std::to_string(i), peak), {y});
    }
    const Model model = graph.compile({x}, {y});
    const Tensor input({1, kElements}, DType::f32);
    const struct mallinfo2 before = ::mallinfo2();
    const std::size_t baseline = before.uordblks + before.hblkhd;
    model.run({input});
    // While a node runs: its input and its output are alive (the caller's input is not counted
    // in the growth, it existed before). Allow one more for allocator slack.
    EXPECT_LE(peak.load() - baseline, 3 * kActivationBytes)
        << "peak growth " << (peak.load() - baseline) / kActivationBytes << " activations";
}

}  // namespace
}  // namespace keel
