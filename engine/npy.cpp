#include <keel/engine/npy.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <keel/engine/error.hpp>

namespace keel {

namespace {

constexpr std::array<unsigned char, 6> kMagic{0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr std::size_t kVersionedPrefix = kMagic.size() + 2;  // magic, major, minor

std::string single_quoted(std::string_view text) {
    std::string result;
    result.reserve(text.size() + 2);
    result.append(1, '\'').append(text).append(1, '\'');
    return result;
}

std::string bytes_text(std::size_t count) { return std::to_string(count) + " bytes"; }

// The header is Python literal syntax; keep error excerpts short and printable.
std::string excerpt(std::string_view header) {
    constexpr std::size_t kLimit = 80;
    std::string text;
    for (const char c : header.substr(0, kLimit)) {
        text += std::isprint(static_cast<unsigned char>(c)) != 0 ? c : '?';
    }
    if (header.size() > kLimit) text += "...";
    return single_quoted(text);
}

struct Header {
    std::string descr;
    bool fortran_order = false;
    Shape shape;
};

// A parser for the one dict literal numpy writes:
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
  public:
    HeaderParser(std::string_view text, std::string_view where) : text_(text), where_(where) {}

    Header parse() {
        Header header;
        bool has_descr = false;
        bool has_fortran_order = false;
        bool has_shape = false;
        expect('{');
        while (!accept('}')) {
            const std::string key = parse_string();
            expect(':');
            if (key == "descr" && !has_descr) {
                skip_space();
                if (peek() == '[') {
                    throw unsupported(where_, "a structured dtype",
                                      "keel reads arrays of one numeric type");
                }
                header.descr = parse_string();
                has_descr = true;
            } else if (key == "fortran_order" && !has_fortran_order) {
                header.fortran_order = parse_bool();
                has_fortran_order = true;
            } else if (key == "shape" && !has_shape) {
                header.shape = parse_shape();
                has_shape = true;
            } else {
                fail("the keys 'descr', 'fortran_order' and 'shape' once each, not " +
                     single_quoted(key));
            }
            if (!accept(',')) {
                expect('}');
                break;
            }
        }
        skip_space();
        if (position_ != text_.size()) fail("nothing but padding after the closing '}'");
        if (!has_descr || !has_fortran_order || !has_shape) {
            fail("the keys 'descr', 'fortran_order' and 'shape'");
        }
        return header;
    }

  private:
    [[noreturn]] void fail(const std::string& expected) const {
        throw invalid_argument(where_, "header", excerpt(text_),
                               expected + " (at offset " + std::to_string(position_) + ")");
    }

    void skip_space() {
        while (position_ < text_.size() &&
               std::isspace(static_cast<unsigned char>(text_[position_])) != 0) {
            ++position_;
        }
    }

    char peek() const { return position_ < text_.size() ? text_[position_] : '\0'; }

    bool accept(char wanted) {
        skip_space();
        if (peek() != wanted) return false;
        ++position_;
        return true;
    }

    void expect(char wanted) {
        if (!accept(wanted)) fail(std::string("'") + wanted + "'");
    }

    std::string parse_string() {
        skip_space();
        const char quote = peek();
        if (quote != '\'' && quote != '"') fail("a quoted string");
        const std::size_t end = text_.find(quote, position_ + 1);
        if (end == std::string_view::npos) fail("a closing quote");
        std::string value(text_.substr(position_ + 1, end - position_ - 1));
        position_ = end + 1;
        return value;
    }

    bool parse_bool() {
        skip_space();
        for (const auto& [word, value] : {std::pair{std::string_view("True"), true},
                                          std::pair{std::string_view("False"), false}}) {
            if (text_.substr(position_, word.size()) == word) {
                position_ += word.size();
                return value;
            }
        }
        fail("True or False");
    }

    std::int64_t parse_integer() {
        skip_space();
        const bool negative = peek() == '-';
        if (negative) ++position_;
        if (std::isdigit(static_cast<unsigned char>(peek())) == 0) fail("an integer");
        std::int64_t value = 0;
        while (std::isdigit(static_cast<unsigned char>(peek())) != 0) {
            const int digit = peek() - '0';
            if (value > (std::numeric_limits<std::int64_t>::max() - digit) / 10) {
                fail("a dimension that fits in a signed 64-bit integer");
            }
            value = value * 10 + digit;
            ++position_;
        }
        if (peek() == 'L') ++position_;  // Python 2 long literal, as old numpy wrote
        return negative ? -value : value;
    }

    Shape parse_shape() {
        expect('(');
        Shape shape;
        while (!accept(')')) {
            // Refuse early: the rank is checked again with the element count, but a hostile header
            // must not grow this vector without bound first.
            if (shape.size() > static_cast<std::size_t>(kMaxRank)) {
                throw invalid_argument(where_, "rank", "more than " + std::to_string(kMaxRank),
                                       "at most " + std::to_string(kMaxRank) + " dimensions");
            }
            shape.push_back(parse_integer());
            if (!accept(',')) {
                expect(')');
                break;
            }
        }
        return shape;
    }

    std::string_view text_;
    std::string_view where_;
    std::size_t position_ = 0;
};

struct ElementType {
    char kind;  // 'f', 'i', 'u' or 'b' (numpy's kind characters)
    std::size_t size;
    bool swap_bytes;
};

ElementType parse_descr(const std::string& descr, std::string_view where) {
    constexpr std::string_view kReadable =
        "keel reads float16/32/64, signed and unsigned integers of 1-8 bytes and bool";
    if (descr == "O" || (descr.size() >= 2 && descr[1] == 'O')) {
        throw unsupported(where, "dtype " + single_quoted(descr),
                          "object arrays hold Python objects, not numbers");
    }
    if (descr.size() < 3) throw unsupported(where, "dtype " + single_quoted(descr), kReadable);
    const char order = descr[0];
    const char kind = descr[1];
    const std::string_view size_text = std::string_view(descr).substr(2);
    std::size_t size = 0;
    if (size_text == "1" || size_text == "2" || size_text == "4" || size_text == "8") {
        size = static_cast<std::size_t>(size_text[0] - '0');
    }
    const bool known = (kind == 'f' && (size == 2 || size == 4 || size == 8)) ||
                       ((kind == 'i' || kind == 'u') && size != 0) || (kind == 'b' && size == 1);
    if (!known || (order != '<' && order != '>' && order != '|' && order != '=')) {
        throw unsupported(where, "dtype " + single_quoted(descr), kReadable);
    }
    if (order == '|' && size != 1) {
        throw invalid_argument(where, "descr", single_quoted(descr),
                               "a byte order '<', '>' or '=' for a multi-byte type");
    }
    const bool big_endian =
        order == '>' || (order == '=' && std::endian::native == std::endian::big);
    const bool host_big_endian = std::endian::native == std::endian::big;
    return ElementType{kind, size, size > 1 && big_endian != host_big_endian};
}

template <typename T>
T load(const std::byte* source, bool swap_bytes) {
    std::array<std::byte, sizeof(T)> raw;
    std::memcpy(raw.data(), source, sizeof(T));
    if (swap_bytes) std::reverse(raw.begin(), raw.end());
    return std::bit_cast<T>(raw);
}

// The value of one element, widened to double (float16 is handled apart, as raw bits).
double load_as_double(const std::byte* source, const ElementType& type) {
    switch (type.kind) {
        case 'f':
            return type.size == 4 ? load<float>(source, type.swap_bytes)
                                  : load<double>(source, type.swap_bytes);
        case 'b':
            return std::to_integer<int>(source[0]) != 0 ? 1.0 : 0.0;
        case 'i':
            switch (type.size) {
                case 1:
                    return load<std::int8_t>(source, false);
                case 2:
                    return load<std::int16_t>(source, type.swap_bytes);
                case 4:
                    return load<std::int32_t>(source, type.swap_bytes);
                default:
                    return static_cast<double>(load<std::int64_t>(source, type.swap_bytes));
            }
        default:
            switch (type.size) {
                case 1:
                    return load<std::uint8_t>(source, false);
                case 2:
                    return load<std::uint16_t>(source, type.swap_bytes);
                case 4:
                    return load<std::uint32_t>(source, type.swap_bytes);
                default:
                    return static_cast<double>(load<std::uint64_t>(source, type.swap_bytes));
            }
    }
}

DType target_dtype(const ElementType& type) {
    if (type.kind == 'f' && type.size == 2) return DType::f16;
    if (type.kind == 'f' && type.size == 4) return DType::f32;
    return DType::f64;
}

// Calls copy(destination_index, source_index) for every element, destination in C order. Fortran
// order stores the first axis fastest, so the source index walks the shape's strides reversed.
template <typename Copy>
void for_each_element(const Shape& shape, std::int64_t count, bool fortran_order, Copy&& copy) {
    if (!fortran_order || shape.size() < 2) {
        for (std::int64_t i = 0; i < count; ++i) copy(i, i);
        return;
    }
    const std::size_t rank = shape.size();
    std::array<std::int64_t, kMaxRank> fortran_stride{};
    fortran_stride[0] = 1;
    for (std::size_t axis = 1; axis < rank; ++axis) {
        fortran_stride[axis] = fortran_stride[axis - 1] * shape[axis - 1];
    }
    std::array<std::int64_t, kMaxRank> position{};
    std::int64_t source = 0;
    for (std::int64_t destination = 0; destination < count; ++destination) {
        copy(destination, source);
        // Advance the C-order position (last axis fastest), keeping `source` in step.
        for (std::size_t axis = rank; axis-- > 0;) {
            ++position[axis];
            source += fortran_stride[axis];
            if (position[axis] < shape[axis]) break;
            source -= position[axis] * fortran_stride[axis];
            position[axis] = 0;
        }
    }
}

}  // namespace

Tensor parse_npy(std::span<const std::byte> bytes, std::string_view name) {
    const std::string where(name);
    if (bytes.size() < kVersionedPrefix ||
        !std::equal(kMagic.begin(), kMagic.end(), bytes.begin(),
                    [](unsigned char expected, std::byte actual) {
                        return std::byte{expected} == actual;
                    })) {
        const bool short_file = bytes.size() < kVersionedPrefix;
        throw invalid_argument(where, short_file ? "file size" : "magic",
                               short_file ? bytes_text(bytes.size()) : "not \\x93NUMPY",
                               "a .npy file starting with \\x93NUMPY and a format version");
    }
    const int major = std::to_integer<int>(bytes[6]);
    const int minor = std::to_integer<int>(bytes[7]);
    if ((major != 1 && major != 2 && major != 3) || minor != 0) {
        throw unsupported(where,
                          "format version " + std::to_string(major) + "." + std::to_string(minor),
                          "keel reads .npy versions 1.0, 2.0 and 3.0");
    }
    const std::size_t length_size = major == 1 ? 2 : 4;
    const std::size_t header_start = kVersionedPrefix + length_size;
    if (bytes.size() < header_start) {
        throw invalid_argument(
            where, "file size", bytes_text(bytes.size()),
            "at least " + bytes_text(header_start) + " for the magic, version and header length");
    }
    std::size_t header_length = 0;
    for (std::size_t i = length_size; i-- > 0;) {  // little-endian
        header_length = header_length * 256 + std::to_integer<std::size_t>(bytes[8 + i]);
    }
    if (header_length > bytes.size() - header_start) {
        throw invalid_argument(where, "header length", bytes_text(header_length),
                               "at most the " + bytes_text(bytes.size() - header_start) +
                                   " left in the file (the header is truncated)");
    }
    const std::string_view header_text(reinterpret_cast<const char*>(bytes.data() + header_start),
                                       header_length);
    const Header header = HeaderParser(header_text, where).parse();
    const ElementType type = parse_descr(header.descr, where);
    const std::int64_t count = element_count(header.shape, where);

    // Check the payload before allocating anything, so a header cannot ask for more memory than
    // the file backs.
    const std::span<const std::byte> payload = bytes.subspan(header_start + header_length);
    const auto element_size = static_cast<std::int64_t>(type.size);
    const bool representable = count <= std::numeric_limits<std::int64_t>::max() / element_size;
    const auto needed = static_cast<std::size_t>(representable ? count * element_size : 0);
    if (!representable || needed != payload.size()) {
        const bool truncated = !representable || needed > payload.size();
        throw invalid_argument(
            where, "payload size", bytes_text(payload.size()),
            (representable ? bytes_text(needed) : "more bytes than an int64 can count") +
                " for shape " + shape_to_string(header.shape) + " of " +
                single_quoted(header.descr) +
                (truncated ? " (the data is truncated)" : " (extra bytes follow the data)"));
    }

    Tensor tensor(header.shape, target_dtype(type));
    const std::byte* source = payload.data();
    switch (tensor.dtype()) {
        case DType::f16: {
            auto* destination = tensor.data_as<std::uint16_t>();
            for_each_element(
                header.shape, count, header.fortran_order, [&](std::int64_t to, std::int64_t from) {
                    destination[to] = load<std::uint16_t>(source + from * 2, type.swap_bytes);
                });
            break;
        }
        case DType::f32: {
            auto* destination = tensor.data_as<float>();
            for_each_element(header.shape, count, header.fortran_order,
                             [&](std::int64_t to, std::int64_t from) {
                                 destination[to] = load<float>(source + from * 4, type.swap_bytes);
                             });
            break;
        }
        default: {
            auto* destination = tensor.data_as<double>();
            for_each_element(
                header.shape, count, header.fortran_order, [&](std::int64_t to, std::int64_t from) {
                    destination[to] = load_as_double(source + from * element_size, type);
                });
            break;
        }
    }
    return tensor;
}

Tensor read_npy(const std::filesystem::path& path) {
    const std::string where = "npy file " + single_quoted(path.string());
    std::ifstream file(path, std::ios::binary);
    std::error_code error;
    const std::uintmax_t size = std::filesystem::file_size(path, error);
    if (!file || error) {
        throw invalid_argument(where, "path", single_quoted(path.string()), "a readable .npy file");
    }
    std::vector<std::byte> bytes(static_cast<std::size_t>(size));
    file.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (file.gcount() != static_cast<std::streamsize>(bytes.size())) {
        throw invalid_argument(where, "bytes read", std::to_string(file.gcount()),
                               "the file's size, " + bytes_text(bytes.size()));
    }
    return parse_npy(bytes, where);
}

void write_npy(const std::filesystem::path& path, const Tensor& tensor) {
    const std::string where = "write_npy " + single_quoted(path.string());
    std::string shape_text = "(";
    for (std::size_t axis = 0; axis < tensor.shape().size(); ++axis) {
        if (axis > 0) shape_text += ", ";
        shape_text += std::to_string(tensor.shape()[axis]);
    }
    if (tensor.shape().size() == 1) shape_text += ",";  // Python's one-element tuple
    shape_text += ")";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_text + ", }";

    // Version 1.0: magic, version, 2-byte length; the whole prefix is padded with spaces to a
    // multiple of 64 bytes and ends in a newline, as numpy writes it.
    constexpr std::size_t kPrefix = kVersionedPrefix + 2;
    constexpr std::size_t kHeaderAlignment = 64;
    const std::size_t unpadded = kPrefix + header.size() + 1;
    const std::size_t padded =
        (unpadded + kHeaderAlignment - 1) / kHeaderAlignment * kHeaderAlignment;
    header.append(padded - unpadded, ' ');
    header += '\n';

    std::string prefix(kMagic.begin(), kMagic.end());
    prefix += '\x01';
    prefix += '\x00';
    prefix += static_cast<char>(header.size() & 0xff);
    prefix += static_cast<char>((header.size() >> 8) & 0xff);

    std::vector<float> values = tensor.to_floats();
    if constexpr (std::endian::native == std::endian::big) {
        for (float& value : values) {
            value = load<float>(reinterpret_cast<const std::byte*>(&value), true);
        }
    }

    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    file.write(prefix.data(), static_cast<std::streamsize>(prefix.size()));
    file.write(header.data(), static_cast<std::streamsize>(header.size()));
    file.write(reinterpret_cast<const char*>(values.data()),
               static_cast<std::streamsize>(values.size() * sizeof(float)));
    file.close();
    if (!file)
        throw invalid_argument(where, "path", single_quoted(path.string()), "a writable file");
}

}  // namespace keel
