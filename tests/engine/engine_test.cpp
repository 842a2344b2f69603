#include <keel/engine/engine.hpp>

#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include <keel/engine/error.hpp>
#include <keel/version.hpp>

#include "engine/engine_state.hpp"

namespace keel {
namespace {

// Sets (or unsets) an environment variable for one scope and restores what was there before.
class ScopedEnvironment {
  public:
    ScopedEnvironment(const char* name, const char* value) : name_(name) {
        if (const char* previous = std::getenv(name)) previous_ = previous;
        if (value != nullptr) {
            setenv(name, value, 1);
        } else {
            unsetenv(name);
        }
    }
    ~ScopedEnvironment() {
        if (previous_) {
            setenv(name_, previous_->c_str(), 1);
        } else {
            unsetenv(name_);
        }
    }
    ScopedEnvironment(const ScopedEnvironment&) = delete;
    ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

  private:
    const char* name_;
    std::optional<std::string> previous_;
};

int every_core() { return std::max(1, static_cast<int>(std::thread::hardware_concurrency())); }

TEST(EngineThreading, ExplicitOptionsAreKept) {
    const ScopedEnvironment environment("KEEL_NUM_THREADS", "5");  // explicit values win
    const Engine engine(ThreadingOptions{.intra_op_threads = 3});
    EXPECT_EQ(engine.intra_op_threads(), 3);
    EXPECT_EQ(engine.threading().intra_op_threads, 3);
    EXPECT_EQ(engine.threading().inter_op_concurrency, 1);
    EXPECT_EQ(engine.threading().max_concurrent_runs, 0);
    EXPECT_EQ(engine.threading().preference, ThreadingOptions::Preference::latency);
    EXPECT_EQ(engine.state().arena.max_concurrency(), 3);
    EXPECT_EQ(engine.state().cpu.get_kind(), dnnl::engine::kind::cpu);
}

// The runtime's settings are kept as given: the graph runtime reads them (docs/threading.md).
TEST(EngineThreading, RuntimeSettingsAreKeptAsGiven) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 2,
                                         .inter_op_concurrency = 3,
                                         .max_concurrent_runs = 4,
                                         .preference = ThreadingOptions::Preference::throughput});
    EXPECT_EQ(engine.threading().inter_op_concurrency, 3);
    EXPECT_EQ(engine.threading().max_concurrent_runs, 4);
    EXPECT_EQ(engine.threading().preference, ThreadingOptions::Preference::throughput);
    EXPECT_EQ(engine.state().cores.cores(), 2);
}

TEST(EngineThreading, ZerosResolveFromTheEnvironment) {
    const ScopedEnvironment environment("KEEL_NUM_THREADS", "2");
    EXPECT_EQ(ThreadingOptions::from_environment().intra_op_threads, 2);
    const Engine from_zero(ThreadingOptions{});
    EXPECT_EQ(from_zero.intra_op_threads(), 2);
    EXPECT_EQ(from_zero.threading().inter_op_concurrency, 1);
    EXPECT_EQ(from_zero.threading().max_concurrent_runs, 0);  // 0 stays: unbounded
    const Engine from_environment;
    EXPECT_EQ(from_environment.intra_op_threads(), 2);
}

TEST(EngineThreading, WithoutTheVariableEveryCoreIsUsed) {
    const ScopedEnvironment unset("KEEL_NUM_THREADS", nullptr);
    EXPECT_EQ(ThreadingOptions::from_environment().intra_op_threads, 0);
    EXPECT_EQ(Engine(ThreadingOptions{}).intra_op_threads(), every_core());
    const ScopedEnvironment empty("KEEL_NUM_THREADS", "");  // empty counts as unset
    EXPECT_EQ(Engine(ThreadingOptions{}).intra_op_threads(), every_core());
}

TEST(EngineThreading, MalformedVariableIsAnError) {
    for (const char* value : {"0", "-2", "abc", "4x", " 4", "2.5", "99999999999"}) {
        const ScopedEnvironment environment("KEEL_NUM_THREADS", value);
        try {
            (void)ThreadingOptions::from_environment();
            ADD_FAILURE() << "accepted KEEL_NUM_THREADS=" << value;
        } catch (const Error& error) {
            const std::string message = error.what();
            EXPECT_EQ(error.category(), ErrorCategory::invalid_argument);
            EXPECT_NE(message.find("KEEL_NUM_THREADS = '" + std::string(value) + "'"),
                      std::string::npos)
                << message;
        }
        EXPECT_THROW(Engine(ThreadingOptions{}), Error) << value;
    }
}

TEST(EngineThreading, NegativeOptionsAreErrors) {
    EXPECT_THROW(Engine(ThreadingOptions{.intra_op_threads = -1}), Error);
    EXPECT_THROW(Engine(ThreadingOptions{.intra_op_threads = 1, .inter_op_concurrency = -1}),
                 Error);
    EXPECT_THROW(Engine(ThreadingOptions{.intra_op_threads = 1, .max_concurrent_runs = -3}), Error);
}

TEST(Engine, CopiesShareState) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 1});
    const Engine copy = engine;  // NOLINT(performance-unnecessary-copy-initialization)
    EXPECT_EQ(&copy.state(), &engine.state());
    Engine assigned(ThreadingOptions{.intra_op_threads = 2});
    assigned = engine;
    EXPECT_EQ(&assigned.state(), &engine.state());
    EXPECT_EQ(assigned.intra_op_threads(), 1);
    Engine moved = std::move(assigned);
    EXPECT_EQ(&moved.state(), &engine.state());
}

TEST(Engine, DefaultEngineIsOneInstance) {
    const Engine& first = default_engine();
    const Engine& second = default_engine();
    EXPECT_EQ(&first, &second);
    EXPECT_GE(first.intra_op_threads(), 1);
}

TEST(Engine, DescribeNamesVersionsIsaThreadsAndBuildType) {
    const Engine engine(ThreadingOptions{.intra_op_threads = 3});
    const std::string text = engine.describe();
    const dnnl_version_t* onednn = dnnl::version();
    const std::string onednn_version = std::to_string(onednn->major) + "." +
                                       std::to_string(onednn->minor) + "." +
                                       std::to_string(onednn->patch);
    EXPECT_NE(text.find("keel " + std::string(version())), std::string::npos) << text;
    EXPECT_NE(text.find("oneDNN " + onednn_version), std::string::npos) << text;
    EXPECT_NE(text.find("CPU ISA (detected by oneDNN): "), std::string::npos) << text;
    EXPECT_NE(text.find("native bf16 in oneDNN: "), std::string::npos) << text;
    EXPECT_NE(text.find("intra-op threads: 3\n"), std::string::npos) << text;
    EXPECT_NE(text.find("inter-op concurrency: 1\n"), std::string::npos) << text;
    EXPECT_NE(text.find("build type: "), std::string::npos) << text;
    EXPECT_EQ(text.find("unknown"), std::string::npos) << text;
}

TEST(Version, IsMajorMinorPatch) {
    const std::string text(version());
    int dots = 0;
    for (const char c : text) {
        if (c == '.') {
            ++dots;
        } else {
            EXPECT_TRUE(c >= '0' && c <= '9') << text;
        }
    }
    EXPECT_EQ(dots, 2) << text;
}

}  // namespace
}  // namespace keel
