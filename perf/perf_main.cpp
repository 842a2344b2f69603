// keel_perf: the whole perf suite in one binary, so that the bandwidth roof, keel and its peers
// are measured in the same minutes. Google Benchmark's flags select and shape the run
// (--benchmark_filter, --benchmark_repetitions, --benchmark_out=FILE, ...); scripts/perf runs it
// and turns the JSON into the report.
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>

#include "perf/cases/shapes.hpp"
#include "perf/layers/normalization/batch_normalization_bench.hpp"
#include "perf/machine/stream_bench.hpp"

namespace {

// 1 and 2 threads (the stable single-core figure and the pair every machine has), plus all cores
// where there are more.
std::vector<int> thread_counts() {
    std::vector<int> counts = {1, 2};
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    if (cores > 2) {
        counts.push_back(cores);
    }
    return counts;
}

// Forwards to the reporter --benchmark_format chose and remembers whether any benchmark failed
// (a peer threw, or its output differed from the reference), so that the exit status says so.
class FailureTrackingReporter final : public benchmark::BenchmarkReporter {
  public:
    FailureTrackingReporter() : display_(benchmark::CreateDefaultDisplayReporter()) {}

    bool ReportContext(const Context& context) override { return display_->ReportContext(context); }
    void ReportRuns(const std::vector<Run>& runs) override {
        for (const Run& run : runs) {
            failed_ = failed_ || run.error_occurred;
        }
        display_->ReportRuns(runs);
    }
    void Finalize() override { display_->Finalize(); }

    bool failed() const { return failed_; }

  private:
    std::unique_ptr<benchmark::BenchmarkReporter> display_;
    bool failed_ = false;
};

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
        return 1;
    }
    const std::vector<int> threads = thread_counts();
    // KEEL_PERF_TORCH=0 leaves the PyTorch peer out (scripts/perf sets it where PyTorch is
    // missing); otherwise a missing PyTorch fails its benchmarks, and so the run.
    const char* torch_setting = std::getenv("KEEL_PERF_TORCH");
    const bool with_torch = torch_setting == nullptr || std::string_view(torch_setting) != "0";
    // Benchmarks run in registration order. Bandwidth drifts between minutes, so the roof is
    // measured again before each shape's cases, and each case is rated against that round.
    for (const keel::perf::BatchNormalizationShape& shape :
         keel::perf::batch_normalization_shapes()) {
        const std::string group = keel::perf::shape_label(shape);
        keel::perf::register_stream_benchmarks(group, threads);
        keel::perf::register_batch_normalization_benchmarks(shape, threads, with_torch);
    }
    FailureTrackingReporter reporter;
    const std::size_t ran = benchmark::RunSpecifiedBenchmarks(&reporter);
    benchmark::Shutdown();
    // A filter that matches nothing is a mistake, not a pass.
    return ran == 0 || reporter.failed() ? 1 : 0;
}
