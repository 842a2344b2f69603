// One compiled model served from several threads at once, as a server would: every request reads
// one snapshot of the variables, so results equal a single-threaded run. Built and run as a test.

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <keel/keel.hpp>

int main() {
    // throughput: each request runs on its own share of the cores instead of all requests
    // queueing for all of them (docs/threading.md).
    const keel::Engine engine(
        keel::ThreadingOptions{.preference = keel::ThreadingOptions::Preference::throughput});
    keel::GraphBuilder graph(engine);
    const keel::SymbolicTensor features = graph.input({64}, "features");
    keel::DenseOptions hidden;
    hidden.units = 32;
    hidden.activation = "relu";
    keel::DenseOptions logits;
    logits.units = 4;
    logits.activation = "softmax";
    keel::SymbolicTensor x = graph.apply(std::make_shared<keel::Dense>(hidden, engine), {features});
    x = graph.apply(std::make_shared<keel::Dense>(logits, engine), {x});
    const keel::Model model = graph.compile({features}, {x});

    keel::Tensor request({1, 64}, keel::DType::f32);
    for (std::int64_t i = 0; i < 64; ++i) request.data_as<float>()[i] = static_cast<float>(i) / 64;
    const keel::Tensor expected = model.run({request})[0];

    std::atomic<int> mismatches{0};
    std::vector<std::thread> servers;
    for (int t = 0; t < 4; ++t) {
        servers.emplace_back([&] {
            for (int r = 0; r < 200; ++r) {
                const keel::Tensor answer = model.run({request})[0];
                if (std::memcmp(answer.data(), expected.data(), answer.byte_size()) != 0) {
                    ++mismatches;
                }
            }
        });
    }
    for (std::thread& server : servers) server.join();
    std::printf("800 requests from 4 threads, %d differing from the single-threaded answer\n",
                mismatches.load());
    return mismatches.load() == 0 ? 0 : 1;
}
