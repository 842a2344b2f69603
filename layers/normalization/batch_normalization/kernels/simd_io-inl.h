// Internal: loading f32/bf16/f16 elements as f32 vectors and storing f32 vectors back rounded to
// nearest even, for every Highway target. Included by the kernels after foreach_target.h, so it is
// compiled once per target (the include guard toggles, as Highway's own -inl.h headers do).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <keel/engine/dtype.hpp>

#ifndef KEEL_BATCH_NORMALIZATION_SIMD_IO_FORMATS_
#define KEEL_BATCH_NORMALIZATION_SIMD_IO_FORMATS_
namespace keel::batch_normalization {

// Element formats as template tags; 16-bit formats are stored as raw bits.
struct F32Format {
    using Storage = float;
};
struct Bf16Format {
    using Storage = std::uint16_t;
};
struct F16Format {
    using Storage = std::uint16_t;
};
// bf16 written with AVX512_BF16's VCVTNEPS2BF16 (the same bits as Bf16Format: see
// narrow_from_f32). Used only on AVX-512 targets, on CPUs that have the instruction.
struct Bf16HardwareFormat {
    using Storage = std::uint16_t;
};

}  // namespace keel::batch_normalization
#endif

#if defined(KEEL_BATCH_NORMALIZATION_SIMD_IO_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef KEEL_BATCH_NORMALIZATION_SIMD_IO_INL_H_
#undef KEEL_BATCH_NORMALIZATION_SIMD_IO_INL_H_
#else
#define KEEL_BATCH_NORMALIZATION_SIMD_IO_INL_H_
#endif

#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace keel::batch_normalization {
namespace HWY_NAMESPACE {

namespace hn = hwy::HWY_NAMESPACE;

using FloatTag = hn::ScalableTag<float>;
using FloatVec = hn::Vec<FloatTag>;

// Hardware f16 conversion (F16C) exists on the AVX2 and AVX-512 targets. Highway 1.0.3 emulates it
// elsewhere, but its emulation truncates instead of rounding and mishandles infinities and NaN, so
// those targets convert lane by lane with keel's own routines (the exact semantics of Tensor::to).
#if HWY_ARCH_X86 && HWY_TARGET < HWY_SSE4 && !defined(HWY_DISABLE_F16C)
inline constexpr bool kHardwareF16 = true;
#else
inline constexpr bool kHardwareF16 = false;
#endif

// The name of this target, for kernel names (each kernel file exports it to learn which target its
// dynamic dispatch picks).
inline const char* KernelTargetName() { return hwy::TargetName(HWY_TARGET); }

// Calls visit(Format{}) with the format tag of `dtype` (f32, bf16 or f16; the kernels' entry
// points have refused any other).
template <class Visitor>
HWY_INLINE void visit_format(DType dtype, Visitor&& visit) {
    switch (dtype) {
        case DType::bf16:
            return visit(Bf16Format{});
        case DType::f16:
            return visit(F16Format{});
        default:
            return visit(F32Format{});
    }
}

// Whether this target can use Bf16HardwareFormat (16 f32 lanes in, 16 bf16 lanes out).
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
inline constexpr bool kHardwareBf16Target = true;
#else
inline constexpr bool kHardwareBf16Target = false;
#endif

template <class Format>
inline constexpr bool kBf16Output =
    std::is_same_v<Format, Bf16Format> || std::is_same_v<Format, Bf16HardwareFormat>;

template <class Format>
HWY_INLINE FloatVec load_as_f32(FloatTag df, const typename Format::Storage* source) {
    if constexpr (std::is_same_v<Format, F32Format>) {
        return hn::LoadU(df, source);
    } else if constexpr (kBf16Output<Format>) {
        // bf16 is the upper half of an f32: widening is exact.
        const hn::Rebind<std::uint16_t, FloatTag> du16;
        const hn::RebindToUnsigned<FloatTag> du32;
        return hn::BitCast(df, hn::ShiftLeft<16>(hn::PromoteTo(du32, hn::LoadU(du16, source))));
    } else if constexpr (kHardwareF16) {
        const hn::Rebind<hwy::float16_t, FloatTag> df16;
        return hn::PromoteTo(df, hn::LoadU(df16, reinterpret_cast<const hwy::float16_t*>(source)));
    } else {
        HWY_ALIGN float widened[hn::MaxLanes(FloatTag())];
        for (std::size_t i = 0; i < hn::Lanes(df); ++i) widened[i] = f16_bits_to_float(source[i]);
        return hn::Load(df, widened);
    }
}

using NarrowVec = hn::Vec<hn::Rebind<std::uint16_t, FloatTag>>;
using WordTag = hn::RebindToUnsigned<FloatTag>;
using WordVec = hn::Vec<WordTag>;

// `value` rounded to bf16, in the upper half of each 32-bit lane (the lower half is not
// meaningful). Highway 1.0.3's DemoteTo to bf16 truncates; keel rounds to nearest even: add 0x7FFF
// plus the lowest kept bit. NaN keeps its sign and upper payload and becomes quiet (the carry
// could otherwise turn it into an infinity or flip the sign).
HWY_INLINE WordVec bf16_in_upper_half(FloatVec value) {
    const WordTag du32;
    const auto bits = hn::BitCast(du32, value);
    const auto bias =
        hn::Add(hn::And(hn::ShiftRight<16>(bits), hn::Set(du32, 1)), hn::Set(du32, 0x7FFF));
    const auto quiet_nan = hn::Or(bits, hn::Set(du32, 0x00400000));
    return hn::IfThenElse(hn::RebindMask(du32, hn::IsNaN(value)), quiet_nan, hn::Add(bits, bias));
}

// The 16-bit storage vector of a rounded f32 vector (bf16 or, with F16C, f16 bits).
template <class Format>
HWY_INLINE NarrowVec narrow_from_f32(FloatVec value) {
    const hn::Rebind<std::uint16_t, FloatTag> du16;
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
    if constexpr (std::is_same_v<Format, Bf16HardwareFormat>) {
        // VCVTNEPS2BF16 rounds to nearest even and quiets NaN exactly as the code below does
        // (upper half | 0x40), but reads f32 subnormals as zero: vectors holding one take the
        // exact path. One instruction instead of nine plus two shuffles, which made writing bf16
        // outputs slower than writing f32 ones.
        const FloatTag df;
        const auto magnitude = hn::Abs(value);
        const auto subnormal = hn::And(hn::Lt(magnitude, hn::Set(df, 1.17549435e-38F)),
                                       hn::Gt(magnitude, hn::Zero(df)));
        if (HWY_LIKELY(hn::AllFalse(df, subnormal))) {
            __m256i narrowed;
            asm("vcvtneps2bf16 %1, %0" : "=v"(narrowed) : "v"(value.raw));
            return hn::BitCast(du16, hn::Vec256<std::uint8_t>{narrowed});
        }
        return narrow_from_f32<Bf16Format>(value);
    } else
#endif
        if constexpr (kBf16Output<Format>) {
        const hn::RebindToSigned<FloatTag> di32;
        // Every lane holds a value below 2^16, so the saturating demotion only narrows.
        return hn::DemoteTo(du16, hn::BitCast(di32, hn::ShiftRight<16>(bf16_in_upper_half(value))));
    } else {
        static_assert(std::is_same_v<Format, F16Format> && kHardwareF16);
        // VCVTPS2PH with imm8 = 0 rounds to nearest even, as keel does.
        const hn::Rebind<hwy::float16_t, FloatTag> df16;
        return hn::BitCast(du16, hn::DemoteTo(df16, value));
    }
}

template <class Format>
HWY_INLINE void store_from_f32(FloatTag df, FloatVec value, typename Format::Storage* destination) {
    if constexpr (std::is_same_v<Format, F32Format>) {
        hn::StoreU(value, df, destination);
    } else if constexpr (kBf16Output<Format> ||
                         (std::is_same_v<Format, F16Format> && kHardwareF16)) {
        const hn::Rebind<std::uint16_t, FloatTag> du16;
        hn::StoreU(narrow_from_f32<Format>(value), du16, destination);
    } else {
        HWY_ALIGN float lanes[hn::MaxLanes(FloatTag())];
        hn::Store(value, df, lanes);
        for (std::size_t i = 0; i < hn::Lanes(df); ++i)
            destination[i] = float_to_f16_bits(lanes[i]);
    }
}

// bf16 pairs: 2 · Lanes consecutive bf16 elements as two f32 vectors, `even` holding elements
// 0, 2, 4, ... and `odd` elements 1, 3, 5, .... Each 32-bit lane of the loaded bytes holds one
// element of each, so widening is a shift and a mask, without vpmovzxwd's cross-lane shuffle
// (which made bf16 passes compute-bound on AVX-512 CPUs that execute it as two 256-bit halves),
// and narrowing needs no pack and no lane permutation either.
HWY_INLINE void load_bf16_pair(const std::uint16_t* source, FloatVec& even, FloatVec& odd) {
    const FloatTag df;
    const WordTag du32;
    const auto words = hn::LoadU(du32, reinterpret_cast<const std::uint32_t*>(source));
    even = hn::BitCast(df, hn::ShiftLeft<16>(words));
    odd = hn::BitCast(df, hn::And(words, hn::Set(du32, 0xFFFF0000u)));
}

// The bf16 bits of a pair, interleaved back into element order (the inverse of load_bf16_pair),
// rounded to nearest even as narrow_from_f32 rounds. Each 32-bit lane takes the even element's
// rounded upper half in its low word and the odd one's in its high word: no pack and no lane
// permutation, which narrow_from_f32 needs per vector. With Bf16HardwareFormat, VCVTNE2PS2BF16
// rounds both vectors in one instruction and one word permutation restores the order; a pair
// holding an f32 subnormal (which the instruction reads as zero) takes the integer path instead.
template <class Out>
HWY_INLINE WordVec narrow_bf16_pair(FloatVec even, FloatVec odd) {
    const WordTag du32;
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
    if constexpr (std::is_same_v<Out, Bf16HardwareFormat>) {
        const __mmask16 subnormal = static_cast<__mmask16>(_mm512_fpclass_ps_mask(even.raw, 0x20) |
                                                           _mm512_fpclass_ps_mask(odd.raw, 0x20));
        if (HWY_LIKELY(subnormal == 0)) {
            // Words 0-15 are the rounded even elements, words 16-31 the odd ones.
            __m512i halves;
            asm("vcvtne2ps2bf16 %2, %1, %0" : "=v"(halves) : "v"(odd.raw), "v"(even.raw));
            alignas(64) static constexpr std::uint16_t kInterleave[32] = {
                0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
            const __m512i order = _mm512_load_si512(kInterleave);
            return WordVec{_mm512_permutexvar_epi16(order, halves)};
        }
    }
#endif
    static_assert(kBf16Output<Out>);
    return hn::Or(hn::ShiftRight<16>(bf16_in_upper_half(even)),
                  hn::And(bf16_in_upper_half(odd), hn::Set(du32, 0xFFFF0000u)));
}

// Whether stream_from_f32 writes with non-temporal stores on this target: only where the stored
// vector fills at least 16 bytes (Highway's Stream writes 16 bytes even for narrower vectors).
template <class Format>
inline constexpr bool kStreams = (HWY_ARCH_X86 != 0) && (HWY_TARGET <= HWY_AVX2) &&
                                 (std::is_same_v<Format, F32Format> || kBf16Output<Format> ||
                                  kHardwareF16);

// As store_from_f32, with a non-temporal store (the line goes to memory without being read for
// ownership or kept in cache) when the target has one. `destination` must be aligned to the
// stored vector's size; hwy::FlushStream() orders the stores before the results are published.
template <class Format>
HWY_INLINE void stream_from_f32(FloatTag df, FloatVec value,
                                typename Format::Storage* destination) {
    if constexpr (!kStreams<Format>) {
        store_from_f32<Format>(df, value, destination);
    } else if constexpr (std::is_same_v<Format, F32Format>) {
        hn::Stream(value, df, destination);
    } else {
        const hn::Rebind<std::uint16_t, FloatTag> du16;
        hn::Stream(narrow_from_f32<Format>(value), du16, destination);
    }
}

// The first `count` (< Lanes) elements, the other lanes zero. Reads only those elements, so it is
// safe at the end of a buffer on every target (masked loads are emulated with full loads on some).
template <class Format>
HWY_INLINE FloatVec load_partial_as_f32(FloatTag df, const typename Format::Storage* source,
                                        std::size_t count) {
    using Storage = typename Format::Storage;
    HWY_ALIGN Storage staged[hn::MaxLanes(FloatTag())] = {};
    std::memcpy(staged, source, count * sizeof(Storage));
    return load_as_f32<Format>(df, staged);
}

// Writes only the first `count` (< Lanes) lanes.
template <class Format>
HWY_INLINE void store_partial_from_f32(FloatTag df, FloatVec value,
                                       typename Format::Storage* destination, std::size_t count) {
    using Storage = typename Format::Storage;
    HWY_ALIGN Storage staged[hn::MaxLanes(FloatTag())];
    store_from_f32<Format>(df, value, staged);
    std::memcpy(destination, staged, count * sizeof(Storage));
}

}  // namespace HWY_NAMESPACE
}  // namespace keel::batch_normalization
HWY_AFTER_NAMESPACE();

#endif  // KEEL_BATCH_NORMALIZATION_SIMD_IO_INL_H_
