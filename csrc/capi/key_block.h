// The key block of a code file (crosslayer.formats.CodeFile): a JSON list of n strings or nulls, written exactly as
// Python's json.dumps(list(keys)) writes it (ASCII only, ", " between items), so a file written in C is byte-identical
// to Python's.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace crosslayer::capi {

using Key = std::optional<std::string>;  // UTF-8; nullopt is JSON null

// Why `text` (`size` bytes) is not valid UTF-8 without surrogates (naming the byte offset), or "" when it is.
std::string invalid_utf8_reason(const char* text, std::size_t size);

// json.dumps(keys) with Python's defaults; every key must be valid UTF-8 (checked by the caller).
std::string encode_key_block(const std::vector<Key>& keys);

// The keys of a key block, or an error message ("" on success) saying what is wrong with it. Reads any JSON text
// that is a list of strings and nulls, encoded as UTF-8 (what Python writes); refuses escapes of unpaired surrogates,
// which have no UTF-8 form.
std::string decode_key_block(const unsigned char* data, std::size_t size, std::vector<Key>& keys);

}  // namespace crosslayer::capi
