#include <keel/engine/logging.hpp>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <keel/engine/engine.hpp>

namespace keel {
namespace {

// Restores keel's own logger however the test ends.
class LoggerRedirection : public ::testing::Test {
  protected:
    void TearDown() override { set_logger(nullptr); }
};

TEST_F(LoggerRedirection, OwnLoggerIsNamedKeelAndNotRegistered) {
    const auto own = logger();
    ASSERT_NE(own, nullptr);
    EXPECT_EQ(own->name(), "keel");
    EXPECT_EQ(logger(), own);  // created once
    // Staying out of spdlog's registry keeps keel from clashing with a host's "keel" logger.
    EXPECT_EQ(spdlog::get("keel"), nullptr);
}

TEST_F(LoggerRedirection, TestSinkReceivesKeelMessages) {
    const auto default_before = spdlog::default_logger();
    const auto default_sinks_before = default_before->sinks();
    const auto own = logger();

    auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(32);
    auto host = std::make_shared<spdlog::logger>("host", sink);
    host->set_level(spdlog::level::debug);
    set_logger(host);
    EXPECT_EQ(logger(), host);

    // The engine logs its configuration at debug level when it is created.
    const Engine engine(ThreadingOptions{.intra_op_threads = 2});
    const std::vector<std::string> messages = sink->last_formatted();
    ASSERT_FALSE(messages.empty());
    bool engine_message_seen = false;
    for (const std::string& message : messages) {
        if (message.find("engine created: 2 intra-op threads") != std::string::npos) {
            engine_message_seen = true;
        }
    }
    EXPECT_TRUE(engine_message_seen) << messages.front();

    set_logger(nullptr);
    EXPECT_EQ(logger(), own);
    // keel never touched spdlog's default logger.
    EXPECT_EQ(spdlog::default_logger(), default_before);
    EXPECT_EQ(spdlog::default_logger()->sinks(), default_sinks_before);
}

TEST_F(LoggerRedirection, HostLevelFiltersKeelMessages) {
    auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(8);
    auto host = std::make_shared<spdlog::logger>("host", sink);
    host->set_level(spdlog::level::err);
    set_logger(host);
    const Engine engine(ThreadingOptions{.intra_op_threads = 1});
    EXPECT_TRUE(sink->last_raw().empty());
}

TEST_F(LoggerRedirection, ReplacingWhileLoggingIsSafe) {
    auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4);
    auto first = std::make_shared<spdlog::logger>("first", sink);
    auto second = std::make_shared<spdlog::logger>("second", sink);
    std::atomic<bool> stop{false};
    std::vector<std::thread> loggers;
    for (int i = 0; i < 2; ++i) {
        loggers.emplace_back([&] {
            while (!stop.load()) logger()->trace("hot path message");
        });
    }
    for (int swap = 0; swap < 2000; ++swap) set_logger(swap % 2 == 0 ? first : second);
    stop = true;
    for (std::thread& thread : loggers) thread.join();
    EXPECT_EQ(logger(), second);
}

// KEEL_LOG_LEVEL is read once, when keel creates its logger, so these run in a fresh process
// (the "threadsafe" death-test style re-executes the test binary).
class LogLevelFromEnvironment : public ::testing::Test {
  protected:
    void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(LogLevelFromEnvironment, ValidLevelIsApplied) {
    EXPECT_EXIT(
        {
            setenv("KEEL_LOG_LEVEL", "debug", 1);
            std::exit(logger()->level() == spdlog::level::debug ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "");
    EXPECT_EXIT(
        {
            setenv("KEEL_LOG_LEVEL", "off", 1);
            std::exit(logger()->level() == spdlog::level::off ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "");
}

TEST_F(LogLevelFromEnvironment, InvalidLevelFallsBackToWarnAndSaysSo) {
    EXPECT_EXIT(
        {
            setenv("KEEL_LOG_LEVEL", "loud", 1);
            std::exit(logger()->level() == spdlog::level::warn ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "KEEL_LOG_LEVEL = 'loud'; expected one of trace");
}

TEST_F(LogLevelFromEnvironment, HostRegisteredKeelLoggerIsUsed) {
    EXPECT_EXIT(
        {
            auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4);
            auto host = std::make_shared<spdlog::logger>("keel", sink);
            spdlog::register_logger(host);
            std::exit(logger() == host ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace keel
