// Code files (.xlc) in C: version 4 (version 3 still read), the byte layout of Python's crosslayer.formats.CodeFile
// (see crosslayer.h), read back with the same checks as Codes.load (magic, version, header, identity, size, crc32,
// key block, bit rules of the file's layout).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "crosslayer/codes.h"
#include "crosslayer/compact_codes.h"
#include "crosslayer/crosslayer.h"
#include "key_block.h"
#include "status.h"

struct crosslayer_codes {
  std::int64_t n = 0, dk = 0, dt = 0;
  int layout = CROSSLAYER_LAYOUT_TWO_PLANE;
  std::vector<std::uint64_t> bits;
  std::vector<float> channel_mean;
  std::string identity;  // "" when the file records none
  bool has_keys = false;
  std::vector<crosslayer::capi::Key> keys;
};

namespace crosslayer::capi {
namespace {

constexpr char kMagic[8] = {'X', 'L', 'C', 'O', 'D', 'E', 'S', '\0'};
constexpr std::uint32_t kFormatVersion = 4;
constexpr std::size_t kHeaderSize = 72;    // "<8sIIQIIIQ16sIII"
constexpr std::size_t kHeaderSizeV3 = 64;  // "<8sIIQIIIQ16sI": no layout (2-plane) and no reserved field
constexpr std::size_t kKeyBytesOffset = 36;
constexpr std::size_t kIdentityOffset = 44;
constexpr std::size_t kIdentityBytes = 16;
constexpr std::size_t kLayoutOffset = 60;    // version 4
constexpr std::size_t kReservedOffset = 64;  // version 4, zero
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the code file layout is little-endian; so is this build");

// zlib's crc32 (reflected polynomial 0xEDB88320), continued from `crc` as zlib.crc32(data, crc) is.
std::uint32_t crc32(const void* data, std::size_t size, std::uint32_t crc) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* bytes = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ bytes[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

template <typename T>
void put(unsigned char* at, T value) {
  std::memcpy(at, &value, sizeof(T));
}
template <typename T>
T get(const unsigned char* at) {
  T value;
  std::memcpy(&value, at, sizeof(T));
  return value;
}

std::string system_error(const std::string& what, const std::string& path) {
  return path + ": " + what + " (" + std::strerror(errno) + ")";
}

// Why `bits` break the layout's rules (naming the first bad item), or "" when they keep them.
std::string invalid_bits_reason(const std::uint64_t* bits, std::int64_t n, std::int64_t dk, std::int64_t dt) {
  const std::int64_t words = words_per_plane(dt);
  const int tail = static_cast<int>(dt % kBitsPerWord);
  for (std::int64_t item = 0; item < n; ++item) {
    for (std::int64_t k = 0; k < dk; ++k) {
      const std::uint64_t* nonzero = bits + (item * dk + k) * kPlanes * words;
      const std::uint64_t* negative = nonzero + words;
      for (std::int64_t w = 0; w < words; ++w) {
        if (negative[w] & ~nonzero[w])
          return "item " + std::to_string(item) +
                 " has a negative bit where its nonzero bit is clear (the negative plane must be a subset of the "
                 "nonzero plane)";
      }
      if (tail && ((nonzero[words - 1] >> tail) | (negative[words - 1] >> tail)))
        return "item " + std::to_string(item) + " has padding bits set (positions >= Dt=" + std::to_string(dt) +
               " in the last word of a plane must be zero)";
    }
  }
  return "";
}

// The same for compact codes (compact_codes.h).
std::string invalid_compact_reason(const std::uint64_t* bits, std::int64_t n, std::int64_t dk, std::int64_t dt) {
  const std::int64_t words = words_per_plane(dt), lw = live_words(dk), stride = compact_words_per_image(dk, dt);
  const int tail = static_cast<int>(dt % kBitsPerWord), live_tail = static_cast<int>(dk % kBitsPerWord);
  for (std::int64_t item = 0; item < n; ++item) {
    const std::uint64_t* image = bits + item * stride;
    if (live_tail && (image[lw - 1] >> live_tail))
      return "item " + std::to_string(item) + " has live bits set at channels >= Dk=" + std::to_string(dk);
    for (std::int64_t k = 0; k < dk; ++k) {
      const std::uint64_t* sign = compact_sign_row(image, dk, dt, k);
      if (tail && (sign[words - 1] >> tail))
        return "item " + std::to_string(item) + " has padding bits set (positions >= Dt=" + std::to_string(dt) +
               " in the last word of a sign row must be zero)";
      if (!channel_live(image, k))
        for (std::int64_t w = 0; w < words; ++w)
          if (sign[w])
            return "item " + std::to_string(item) +
                   " has sign bits in a dead channel (a channel whose live bit is clear must have an all-zero sign "
                   "row)";
    }
  }
  return "";
}

std::string invalid_reason(int layout, const std::uint64_t* bits, std::int64_t n, std::int64_t dk, std::int64_t dt) {
  return layout == CROSSLAYER_LAYOUT_COMPACT ? invalid_compact_reason(bits, n, dk, dt)
                                             : invalid_bits_reason(bits, n, dk, dt);
}

void require_layout(int layout) {
  require(layout == CROSSLAYER_LAYOUT_TWO_PLANE || layout == CROSSLAYER_LAYOUT_COMPACT,
          "layout: expected CROSSLAYER_LAYOUT_TWO_PLANE (0) or CROSSLAYER_LAYOUT_COMPACT (1), got " +
              std::to_string(layout));
}

std::int64_t layout_image_words(int layout, std::int64_t dk, std::int64_t dt) {
  return image_words(layout == CROSSLAYER_LAYOUT_COMPACT ? CodeLayout::kCompact : CodeLayout::kTwoPlane, dk, dt);
}

const char* bits_shape_text(int layout) {
  return layout == CROSSLAYER_LAYOUT_COMPACT ? "uint64 [n][ceil(dk/64) + dk*ceil(dt/64)]"
                                             : "uint64 [n][dk][2][ceil(dt/64)]";
}

void require_shape(std::int64_t n, std::int64_t dk, std::int64_t dt) {
  require(n >= 0 && n < (std::int64_t{1} << 40), "n: expected an integer in [0, 2^40), got " + std::to_string(n));
  // dk and dt are 32-bit fields of the header
  require(dk >= 1 && dk <= UINT32_MAX, "dk: expected an integer in [1, 2^32), got " + std::to_string(dk));
  require(dt >= 1 && dt <= UINT32_MAX, "dt: expected an integer in [1, 2^32), got " + std::to_string(dt));
}

class File {
 public:
  explicit File(int fd) : fd_(fd) {}
  ~File() {
    if (fd_ >= 0) ::close(fd_);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  int fd() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

void write_all(int fd, const void* data, std::size_t size, const std::string& path) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd, bytes, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      throw Failure{CROSSLAYER_IO_ERROR, system_error("write failed", path)};
    }
    bytes += written;
    size -= static_cast<std::size_t>(written);
  }
}

// The process umask without changing it (umask(2) can only read it by setting it, racing other threads' file
// creation): Linux reports it in /proc/self/status. 022 when that is unreadable.
mode_t current_umask() {
  std::FILE* status = std::fopen("/proc/self/status", "r");
  mode_t mask = 022;
  if (status != nullptr) {
    char line[256];
    unsigned value = 0;
    while (std::fgets(line, sizeof line, status) != nullptr) {
      if (std::sscanf(line, "Umask: %o", &value) == 1) {
        mask = static_cast<mode_t>(value);
        break;
      }
    }
    std::fclose(status);
  }
  return mask;
}

std::string parent_directory(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Writes `parts` (header, payload) to a temporary file beside `path`, fsyncs it and renames it over `path`, so a reader sees
// the old file or the complete new one (crosslayer._atomic.atomic_write does the same in Python).
struct Part {
  const void* data;
  std::size_t size;
};

void atomic_write(const std::string& path, const std::vector<Part>& parts) {
  const std::string directory = parent_directory(path);
  const std::size_t slash = path.rfind('/');
  std::string tmp = directory + "/." + path.substr(slash == std::string::npos ? 0 : slash + 1) + ".XXXXXX";
  std::vector<char> tmp_name(tmp.begin(), tmp.end());
  tmp_name.push_back('\0');
  File file(::mkstemp(tmp_name.data()));
  if (file.fd() < 0) throw Failure{CROSSLAYER_IO_ERROR, system_error("cannot create a file in " + directory, path)};
  tmp.assign(tmp_name.data());
  try {
    ::fchmod(file.fd(), 0666 & ~current_umask());  // mkstemp creates 0600; give what open() would
    for (const Part& part : parts) write_all(file.fd(), part.data, part.size, path);
    if (::fsync(file.fd()) != 0) throw Failure{CROSSLAYER_IO_ERROR, system_error("fsync failed", path)};
    if (::close(file.release()) != 0) throw Failure{CROSSLAYER_IO_ERROR, system_error("close failed", path)};
    if (::rename(tmp.c_str(), path.c_str()) != 0) throw Failure{CROSSLAYER_IO_ERROR, system_error("rename failed", path)};
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  File dir(::open(directory.c_str(), O_RDONLY));
  if (dir.fd() >= 0) ::fsync(dir.fd());
}

std::vector<unsigned char> read_whole_file(const std::string& path) {
  File file(::open(path.c_str(), O_RDONLY));
  if (file.fd() < 0) throw Failure{CROSSLAYER_IO_ERROR, system_error("cannot open", path)};
  std::vector<unsigned char> data;
  unsigned char buffer[1 << 16];
  for (;;) {
    const ssize_t got = ::read(file.fd(), buffer, sizeof buffer);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Failure{CROSSLAYER_IO_ERROR, system_error("read failed", path)};
    }
    if (got == 0) break;
    data.insert(data.end(), buffer, buffer + got);
  }
  return data;
}

Failure format_error(const std::string& path, const std::string& what) {
  return Failure{CROSSLAYER_FORMAT_ERROR, path + ": " + what};
}

// The identity a caller passes: NULL or "" for none, else at most 16 ASCII characters (CodeFile.write's rule).
std::string identity_argument(const char* identity) {
  if (identity == nullptr) return "";
  const std::string text(identity);
  bool ascii = text.size() <= kIdentityBytes;
  for (unsigned char c : text) ascii = ascii && c < 0x80;
  if (ascii) return text;
  std::string shown;  // printable ASCII as is, other bytes as \xNN: the message itself stays ASCII
  for (unsigned char c : text.substr(0, 40)) {
    char escaped[8];
    std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
    shown += (c >= 0x20 && c < 0x7F) ? std::string(1, static_cast<char>(c)) : std::string(escaped);
  }
  throw Failure{CROSSLAYER_INVALID_ARGUMENT, "identity: expected NULL, \"\" or at most " +
                                                 std::to_string(kIdentityBytes) +
                                                 " ASCII characters (an encoder identity digest), got \"" + shown +
                                                 (text.size() > 40 ? "...\"" : "\"")};
}

// The identity field of a header: ASCII, zero padded (Python strips the padding); a NUL inside it has no C string.
std::string identity_field(const unsigned char* field, const std::string& path) {
  std::size_t length = kIdentityBytes;
  while (length > 0 && field[length - 1] == 0) --length;
  for (std::size_t i = 0; i < length; ++i) {
    if (field[i] >= 0x80) throw format_error(path, "inconsistent header (identity is not ASCII)");
    if (field[i] == 0) throw format_error(path, "inconsistent header (identity holds a NUL byte)");
  }
  return std::string(reinterpret_cast<const char*>(field), length);
}

// keys[i] (NULL: a null key) of key_lengths[i] bytes (key_lengths NULL: NUL-terminated), each valid UTF-8.
std::vector<Key> key_arguments(const char* const* keys, const std::int64_t* key_lengths, std::int64_t n) {
  std::vector<Key> out;
  out.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::string name = "keys[" + std::to_string(i) + "]";
    if (keys[i] == nullptr) {
      out.emplace_back();
      continue;
    }
    require(key_lengths == nullptr || key_lengths[i] >= 0,
            "key_lengths[" + std::to_string(i) + "]: expected a length >= 0, got " +
                std::to_string(key_lengths ? key_lengths[i] : 0));
    const std::size_t length = key_lengths ? static_cast<std::size_t>(key_lengths[i]) : std::strlen(keys[i]);
    const std::string reason = invalid_utf8_reason(keys[i], length);
    require(reason.empty(), name + ": " + reason + " (keys are UTF-8 text)");
    out.emplace_back(std::string(keys[i], length));
  }
  return out;
}

}  // namespace
}  // namespace crosslayer::capi

using namespace crosslayer;
using namespace crosslayer::capi;

extern "C" {

crosslayer_status crosslayer_codes_check(const uint64_t* bits, int64_t n, int64_t dk, int64_t dt) {
  return crosslayer_codes_check_layout(CROSSLAYER_LAYOUT_TWO_PLANE, bits, n, dk, dt);
}

crosslayer_status crosslayer_codes_check_layout(int layout, const uint64_t* bits, int64_t n, int64_t dk, int64_t dt) {
  return guarded([&] {
    require_layout(layout);
    require_shape(n, dk, dt);
    require(n == 0 || bits != nullptr, std::string("bits: expected ") + bits_shape_text(layout) + ", got NULL");
    const std::string reason = invalid_reason(layout, bits, n, dk, dt);
    require(reason.empty(), "bits: " + reason);
  });
}

crosslayer_status crosslayer_codes_write(const char* path, const uint64_t* bits, const float* channel_mean, int64_t n,
                                         int64_t dk, int64_t dt, const char* identity, const char* const* keys,
                                         const int64_t* key_lengths) {
  return crosslayer_codes_write_layout(path, CROSSLAYER_LAYOUT_TWO_PLANE, bits, channel_mean, n, dk, dt, identity,
                                       keys, key_lengths);
}

crosslayer_status crosslayer_codes_write_layout(const char* path, int layout, const uint64_t* bits,
                                                const float* channel_mean, int64_t n, int64_t dk, int64_t dt,
                                                const char* identity, const char* const* keys,
                                                const int64_t* key_lengths) {
  return guarded([&] {
    require(path != nullptr && path[0] != '\0', "path: expected a file path, got NULL or \"\"");
    require_layout(layout);
    require_shape(n, dk, dt);
    require(n == 0 || bits != nullptr, std::string("bits: expected ") + bits_shape_text(layout) + ", got NULL");
    require(n == 0 || channel_mean != nullptr, "channel_mean: expected float32 [n][dk], got NULL");
    const std::string identity_text = identity_argument(identity);
    require(keys != nullptr || key_lengths == nullptr, "key_lengths: expected NULL when keys is NULL");
    std::string key_block;
    if (keys != nullptr) key_block = encode_key_block(key_arguments(keys, key_lengths, n));
    const std::string reason = invalid_reason(layout, bits, n, dk, dt);
    require(reason.empty(), "bits: " + reason + "; nothing was written");
    const std::int64_t words = words_per_plane(dt);
    const std::size_t bits_bytes = static_cast<std::size_t>(n * layout_image_words(layout, dk, dt)) * sizeof(std::uint64_t);
    const std::size_t mean_bytes = static_cast<std::size_t>(n * dk) * sizeof(float);
    unsigned char header[kHeaderSize] = {};
    std::memcpy(header, kMagic, sizeof kMagic);
    put<std::uint32_t>(header + 8, kFormatVersion);
    put<std::uint32_t>(header + 12, static_cast<std::uint32_t>(kHeaderSize));
    put<std::uint64_t>(header + 16, static_cast<std::uint64_t>(n));
    put<std::uint32_t>(header + 24, static_cast<std::uint32_t>(dk));
    put<std::uint32_t>(header + 28, static_cast<std::uint32_t>(dt));
    put<std::uint32_t>(header + 32, static_cast<std::uint32_t>(words));
    put<std::uint64_t>(header + kKeyBytesOffset, static_cast<std::uint64_t>(key_block.size()));
    std::memcpy(header + kIdentityOffset, identity_text.data(), identity_text.size());
    put<std::uint32_t>(header + kLayoutOffset, static_cast<std::uint32_t>(layout));
    put<std::uint32_t>(header + kReservedOffset, 0);
    constexpr std::size_t kCrcOffset = kHeaderSize - 4;
    const std::vector<Part> payload = {{bits, bits_bytes}, {channel_mean, mean_bytes}, {key_block.data(), key_block.size()}};
    std::uint32_t crc = crc32(header, kCrcOffset, 0);
    for (const Part& part : payload) crc = crc32(part.data, part.size, crc);
    put<std::uint32_t>(header + kCrcOffset, crc);
    std::vector<Part> parts = {{header, kHeaderSize}};
    parts.insert(parts.end(), payload.begin(), payload.end());
    atomic_write(path, parts);
  });
}

crosslayer_status crosslayer_codes_read(const char* path_text, crosslayer_codes** out) {
  if (out != nullptr) *out = nullptr;
  return guarded([&] {
    require(out != nullptr, "out: expected a crosslayer_codes** to receive the result, got NULL");
    require(path_text != nullptr && path_text[0] != '\0', "path: expected a file path, got NULL or \"\"");
    const std::string path(path_text);
    const std::vector<unsigned char> data = read_whole_file(path);
    if (data.size() < kHeaderSizeV3)
      throw format_error(path, "truncated header (" + std::to_string(data.size()) +
                                   " bytes); not a crosslayer code file");
    if (std::memcmp(data.data(), kMagic, sizeof kMagic) != 0)
      throw format_error(path, "not a crosslayer code file (bad magic)");
    const auto version = get<std::uint32_t>(data.data() + 8);
    if (version != 3 && version != kFormatVersion)
      throw format_error(path, "code file version " + std::to_string(version) + "; this crosslayer reads versions 3 and 4");
    const std::size_t expected_header = version == 3 ? kHeaderSizeV3 : kHeaderSize;
    if (data.size() < expected_header)
      throw format_error(path, "truncated header (" + std::to_string(data.size()) +
                                   " bytes); not a crosslayer code file");
    const std::size_t crc_offset = expected_header - 4;
    const std::uint32_t layout_field = version == 3 ? 0 : get<std::uint32_t>(data.data() + kLayoutOffset);
    const std::uint32_t reserved = version == 3 ? 0 : get<std::uint32_t>(data.data() + kReservedOffset);
    const int layout = static_cast<int>(layout_field);
    const auto header_size = get<std::uint32_t>(data.data() + 12);
    const auto n = get<std::uint64_t>(data.data() + 16);
    const std::int64_t dk = get<std::uint32_t>(data.data() + 24), dt = get<std::uint32_t>(data.data() + 28);
    const std::int64_t words = get<std::uint32_t>(data.data() + 32);
    const auto key_bytes = get<std::uint64_t>(data.data() + kKeyBytesOffset);
    const auto crc = get<std::uint32_t>(data.data() + crc_offset);
    if (header_size != expected_header || dk < 1 || dt < 1 || words != words_per_plane(dt) || layout_field > 1 ||
        reserved != 0)
      throw format_error(path, "inconsistent header (Dk=" + std::to_string(dk) + ", Dt=" + std::to_string(dt) +
                                   ", words=" + std::to_string(words) + ", layout=" + std::to_string(layout_field) +
                                   ")");
    const std::string identity = identity_field(data.data() + kIdentityOffset, path);
    // n and the key block's size come from the file: bound them by the file size before multiplying
    const std::uint64_t payload = data.size() - expected_header;
    const std::int64_t image_words_ = layout_image_words(layout, dk, dt);
    const std::uint64_t item_bytes = static_cast<std::uint64_t>(image_words_ * 8 + dk * 4);
    if (key_bytes > payload || n > (payload - key_bytes) / item_bytes || payload != n * item_bytes + key_bytes)
      throw format_error(path, "expected " + std::to_string(expected_header) + " + " + std::to_string(n) + " x " +
                                   std::to_string(item_bytes) + " + " + std::to_string(key_bytes) + " bytes for " +
                                   std::to_string(n) + " codes, file has " + std::to_string(data.size()) +
                                   " (truncated or extended)");
    std::uint32_t actual = crc32(data.data(), crc_offset, 0);
    actual = crc32(data.data() + expected_header, payload, actual);
    if (actual != crc) throw format_error(path, "checksum mismatch (file is damaged)");
    const std::size_t bits_bytes = static_cast<std::size_t>(n * image_words_ * 8);
    const std::size_t mean_bytes = static_cast<std::size_t>(n * dk * 4);
    auto codes = std::make_unique<crosslayer_codes>();
    codes->n = static_cast<std::int64_t>(n);
    codes->dk = dk;
    codes->dt = dt;
    codes->layout = layout;
    codes->identity = identity;
    codes->bits.resize(bits_bytes / 8);
    codes->channel_mean.resize(mean_bytes / 4);
    const unsigned char* at = data.data() + expected_header;
    if (bits_bytes) std::memcpy(codes->bits.data(), at, bits_bytes);
    if (mean_bytes) std::memcpy(codes->channel_mean.data(), at + bits_bytes, mean_bytes);
    if (key_bytes > 0) {
      codes->has_keys = true;
      const std::string error = decode_key_block(at + bits_bytes + mean_bytes, key_bytes, codes->keys);
      if (!error.empty()) throw format_error(path, "damaged key block (" + error + ")");
      if (codes->keys.size() != n)
        throw format_error(path, "damaged key block (expected " + std::to_string(n) + " strings, found " +
                                     std::to_string(codes->keys.size()) + ")");
    }
    const std::string reason = invalid_reason(layout, codes->bits.data(), codes->n, dk, dt);
    if (!reason.empty()) throw format_error(path, "bits: " + reason);
    *out = codes.release();
  });
}

void crosslayer_codes_free(crosslayer_codes* codes) { delete codes; }
int64_t crosslayer_codes_n(const crosslayer_codes* codes) { return codes ? codes->n : 0; }
int64_t crosslayer_codes_dk(const crosslayer_codes* codes) { return codes ? codes->dk : 0; }
int64_t crosslayer_codes_dt(const crosslayer_codes* codes) { return codes ? codes->dt : 0; }

int crosslayer_codes_layout(const crosslayer_codes* codes) { return codes ? codes->layout : CROSSLAYER_LAYOUT_TWO_PLANE; }
const uint64_t* crosslayer_codes_bits(const crosslayer_codes* codes) { return codes ? codes->bits.data() : nullptr; }
const float* crosslayer_codes_channel_mean(const crosslayer_codes* codes) {
  return codes ? codes->channel_mean.data() : nullptr;
}
const char* crosslayer_codes_identity(const crosslayer_codes* codes) {
  return codes && !codes->identity.empty() ? codes->identity.c_str() : nullptr;
}
int crosslayer_codes_has_keys(const crosslayer_codes* codes) { return codes && codes->has_keys ? 1 : 0; }
const char* crosslayer_codes_key(const crosslayer_codes* codes, int64_t index, int64_t* length) {
  if (length != nullptr) *length = 0;
  if (codes == nullptr || !codes->has_keys || index < 0 || index >= codes->n) return nullptr;
  const Key& key = codes->keys[static_cast<std::size_t>(index)];
  if (!key) return nullptr;
  if (length != nullptr) *length = static_cast<int64_t>(key->size());
  return key->c_str();
}

}  // extern "C"
