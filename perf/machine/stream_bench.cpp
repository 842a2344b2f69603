#include "perf/machine/stream_bench.hpp"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include <benchmark/benchmark.h>

#include "perf/support/aligned_buffer.hpp"

namespace keel::perf {
namespace {

// 128 MiB per array: copy moves 256 MiB per pass and triad 384 MiB, 8x and 12x the 32 MiB L3, so
// no pass finds its data in cache from the previous one.
constexpr std::size_t kElements = std::size_t{32} << 20;
constexpr float kTriadScalar = 3.0f;

enum class Kernel { copy, triad };
enum class Stores { ordinary, nontemporal };

// The widest vector ISA the CPU runs, checked at run time so that the binary stays portable and
// the roof is measured with the same vector width keel's own kernels can reach.
enum class Isa { avx512, avx, sse };

Isa detect_isa() {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        return Isa::avx512;
    }
    if (__builtin_cpu_supports("avx")) {
        return Isa::avx;
    }
    return Isa::sse;
}

std::string_view isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512:
            return "avx512";
        case Isa::avx:
            return "avx";
        case Isa::sse:
            return "sse";
    }
    return "?";
}

// Each kernel handles [begin, end) of the arrays; bounds are multiples of 16 floats (one 64-byte
// line), so aligned loads and stores are legal for every ISA.
template <bool kNonTemporal>
__attribute__((target("avx512f"))) void copy_avx512(const float* a, float* b, std::size_t count) {
    for (std::size_t i = 0; i < count; i += 16) {
        const __m512 value = _mm512_load_ps(a + i);
        if constexpr (kNonTemporal) {
            _mm512_stream_ps(b + i, value);
        } else {
            _mm512_store_ps(b + i, value);
        }
    }
}

template <bool kNonTemporal>
__attribute__((target("avx512f"))) void triad_avx512(float* a, const float* b, const float* c,
                                                     std::size_t count) {
    const __m512 scalar = _mm512_set1_ps(kTriadScalar);
    for (std::size_t i = 0; i < count; i += 16) {
        const __m512 value = _mm512_fmadd_ps(scalar, _mm512_load_ps(c + i), _mm512_load_ps(b + i));
        if constexpr (kNonTemporal) {
            _mm512_stream_ps(a + i, value);
        } else {
            _mm512_store_ps(a + i, value);
        }
    }
}

template <bool kNonTemporal>
__attribute__((target("avx"))) void copy_avx(const float* a, float* b, std::size_t count) {
    for (std::size_t i = 0; i < count; i += 8) {
        const __m256 value = _mm256_load_ps(a + i);
        if constexpr (kNonTemporal) {
            _mm256_stream_ps(b + i, value);
        } else {
            _mm256_store_ps(b + i, value);
        }
    }
}

template <bool kNonTemporal>
__attribute__((target("avx"))) void triad_avx(float* a, const float* b, const float* c,
                                              std::size_t count) {
    const __m256 scalar = _mm256_set1_ps(kTriadScalar);
    for (std::size_t i = 0; i < count; i += 8) {
        const __m256 value =
            _mm256_add_ps(_mm256_load_ps(b + i), _mm256_mul_ps(scalar, _mm256_load_ps(c + i)));
        if constexpr (kNonTemporal) {
            _mm256_stream_ps(a + i, value);
        } else {
            _mm256_store_ps(a + i, value);
        }
    }
}

template <bool kNonTemporal>
void copy_sse(const float* a, float* b, std::size_t count) {
    for (std::size_t i = 0; i < count; i += 4) {
        const __m128 value = _mm_load_ps(a + i);
        if constexpr (kNonTemporal) {
            _mm_stream_ps(b + i, value);
        } else {
            _mm_store_ps(b + i, value);
        }
    }
}

template <bool kNonTemporal>
void triad_sse(float* a, const float* b, const float* c, std::size_t count) {
    const __m128 scalar = _mm_set1_ps(kTriadScalar);
    for (std::size_t i = 0; i < count; i += 4) {
        const __m128 value = _mm_add_ps(_mm_load_ps(b + i), _mm_mul_ps(scalar, _mm_load_ps(c + i)));
        if constexpr (kNonTemporal) {
            _mm_stream_ps(a + i, value);
        } else {
            _mm_store_ps(a + i, value);
        }
    }
}

template <bool kNonTemporal>
void run_chunk(Isa isa, Kernel kernel, float* a, float* b, const float* c, std::size_t count) {
    switch (isa) {
        case Isa::avx512:
            kernel == Kernel::copy ? copy_avx512<kNonTemporal>(a, b, count)
                                   : triad_avx512<kNonTemporal>(a, b, c, count);
            break;
        case Isa::avx:
            kernel == Kernel::copy ? copy_avx<kNonTemporal>(a, b, count)
                                   : triad_avx<kNonTemporal>(a, b, c, count);
            break;
        case Isa::sse:
            kernel == Kernel::copy ? copy_sse<kNonTemporal>(a, b, count)
                                   : triad_sse<kNonTemporal>(a, b, c, count);
            break;
    }
    if constexpr (kNonTemporal) {
        // Streaming stores are weakly ordered: fence so the pass is complete when it returns.
        _mm_sfence();
    }
}

struct StreamArrays {
    AlignedBuffer<float> a{kElements};
    AlignedBuffer<float> b{kElements};
    AlignedBuffer<float> c{kElements};

    StreamArrays() {
        // Touch every page before timing so that no pass pays for page faults.
        std::fill_n(a.data(), kElements, 1.0f);
        std::fill_n(b.data(), kElements, 2.0f);
        std::fill_n(c.data(), kElements, 0.5f);
    }
};

// Created on the first stream benchmark and kept: 384 MiB, allocated once per process.
StreamArrays& stream_arrays() {
    static StreamArrays arrays;
    return arrays;
}

void run_pass(Isa isa, Kernel kernel, Stores stores, int threads) {
    StreamArrays& arrays = stream_arrays();
#pragma omp parallel num_threads(threads)
    {
        const auto team = static_cast<std::size_t>(omp_get_num_threads());
        const auto rank = static_cast<std::size_t>(omp_get_thread_num());
        constexpr std::size_t kLine = 16;
        const std::size_t lines = kElements / kLine;
        const std::size_t begin = lines * rank / team * kLine;
        const std::size_t end = lines * (rank + 1) / team * kLine;
        // Copy reads a and writes b; triad writes a from b and c.
        float* first = arrays.a.data() + begin;
        float* second = arrays.b.data() + begin;
        const float* third = arrays.c.data() + begin;
        if (stores == Stores::nontemporal) {
            run_chunk<true>(isa, kernel, first, second, third, end - begin);
        } else {
            run_chunk<false>(isa, kernel, first, second, third, end - begin);
        }
    }
}

void stream_benchmark(benchmark::State& state, Kernel kernel, Stores stores, int threads) {
    const Isa isa = detect_isa();
    // One untimed pass wakes the thread team and evicts whatever the previous benchmark cached.
    run_pass(isa, kernel, stores, threads);
    for (auto _ : state) {
        run_pass(isa, kernel, stores, threads);
        benchmark::ClobberMemory();
    }
    const std::int64_t arrays_touched = kernel == Kernel::copy ? 2 : 3;
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * arrays_touched *
                            static_cast<std::int64_t>(kElements * sizeof(float)));
    state.SetLabel(std::string(isa_name(isa)));
}

}  // namespace

void register_stream_benchmarks(std::string_view group, std::span<const int> thread_counts) {
    for (const Kernel kernel : {Kernel::copy, Kernel::triad}) {
        for (const Stores stores : {Stores::ordinary, Stores::nontemporal}) {
            for (const int threads : thread_counts) {
                const std::string name =
                    "stream/group:" + std::string(group) +
                    "/kernel:" + (kernel == Kernel::copy ? "copy" : "triad") +
                    "/stores:" + (stores == Stores::ordinary ? "ordinary" : "nontemporal") +
                    "/threads:" + std::to_string(threads);
                benchmark::RegisterBenchmark(name.c_str(),
                                             [kernel, stores, threads](benchmark::State& state) {
                                                 stream_benchmark(state, kernel, stores, threads);
                                             })
                    ->UseRealTime()
                    ->Unit(benchmark::kMillisecond);
            }
        }
    }
}

}  // namespace keel::perf
