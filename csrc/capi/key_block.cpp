// JSON key blocks of code files, without a JSON library: the grammar needed is a list of strings and nulls.
#include "key_block.h"

#include <cstdio>

namespace crosslayer::capi {
namespace {

// The code point of the UTF-8 sequence at `text[at]` (advancing `at`), or -1 when it is not well-formed (overlong,
// a surrogate, above U+10FFFF, truncated): Python's strict UTF-8 decoder refuses the same sequences.
long decode_utf8(const unsigned char* text, std::size_t size, std::size_t& at) {
  const unsigned char lead = text[at];
  if (lead < 0x80) {
    ++at;
    return lead;
  }
  int extra;
  long cp, minimum;
  if ((lead & 0xE0) == 0xC0) {
    extra = 1, cp = lead & 0x1F, minimum = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    extra = 2, cp = lead & 0x0F, minimum = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    extra = 3, cp = lead & 0x07, minimum = 0x10000;
  } else {
    return -1;
  }
  if (size - at <= static_cast<std::size_t>(extra)) return -1;
  for (int i = 1; i <= extra; ++i) {
    const unsigned char next = text[at + i];
    if ((next & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (next & 0x3F);
  }
  if (cp < minimum || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
  at += extra + 1;
  return cp;
}

void append_utf8(std::string& out, long cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

void append_escape(std::string& out, long unit) {
  char buffer[8];
  std::snprintf(buffer, sizeof buffer, "\\u%04lx", unit);
  out += buffer;
}

// Python's json encoder with ensure_ascii: printable ASCII as is, short escapes for \ " \b \f \n \r \t, every other
// code point as \uXXXX (lower-case hex; a surrogate pair above U+FFFF).
void append_json_string(std::string& out, const std::string& key) {
  out += '"';
  const auto* text = reinterpret_cast<const unsigned char*>(key.data());
  for (std::size_t at = 0; at < key.size();) {
    const long cp = decode_utf8(text, key.size(), at);
    switch (cp) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (cp >= 0x20 && cp <= 0x7E) {
          out += static_cast<char>(cp);
        } else if (cp < 0x10000) {
          append_escape(out, cp);
        } else {
          append_escape(out, 0xD800 + ((cp - 0x10000) >> 10));
          append_escape(out, 0xDC00 + ((cp - 0x10000) & 0x3FF));
        }
    }
  }
  out += '"';
}

class Parser {
 public:
  Parser(const unsigned char* data, std::size_t size) : data_(data), size_(size) {}

  std::string list(std::vector<Key>& keys) {
    skip_space();
    if (!take('[')) return "expected a JSON list";
    skip_space();
    if (!take(']')) {
      for (;;) {
        skip_space();
        Key key;
        if (std::string error = value(key); !error.empty()) return error;
        keys.push_back(std::move(key));
        skip_space();
        if (take(']')) break;
        if (!take(',')) return where("expected ',' or ']'");
      }
    }
    skip_space();
    return at_ == size_ ? "" : where("extra data after the list");
  }

 private:
  std::string where(const std::string& what) const { return what + " at byte " + std::to_string(at_); }

  void skip_space() {
    while (at_ < size_ && (data_[at_] == ' ' || data_[at_] == '\t' || data_[at_] == '\n' || data_[at_] == '\r')) ++at_;
  }
  bool take(char c) {
    if (at_ < size_ && data_[at_] == static_cast<unsigned char>(c)) {
      ++at_;
      return true;
    }
    return false;
  }

  std::string value(Key& key) {
    if (size_ - at_ >= 4 && std::string(reinterpret_cast<const char*>(data_ + at_), 4) == "null") {
      at_ += 4;
      key.reset();
      return "";
    }
    if (!take('"')) return where("expected a string or null");
    key.emplace();
    return string_body(*key);
  }

  // Four hex digits after "\u", or -1.
  long hex4() {
    if (size_ - at_ < 4) return -1;
    long unit = 0;
    for (int i = 0; i < 4; ++i) {
      const unsigned char c = data_[at_ + i];
      int digit;
      if (c >= '0' && c <= '9') digit = c - '0';
      else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
      else return -1;
      unit = unit * 16 + digit;
    }
    at_ += 4;
    return unit;
  }

  std::string string_body(std::string& out) {
    for (;;) {
      if (at_ >= size_) return where("unterminated string");
      const unsigned char c = data_[at_];
      if (c == '"') {
        ++at_;
        return "";
      }
      if (c < 0x20) return where("control character in a string");
      if (c != '\\') {
        const long cp = decode_utf8(data_, size_, at_);
        if (cp < 0) return where("invalid UTF-8");
        append_utf8(out, cp);
        continue;
      }
      ++at_;
      if (at_ >= size_) return where("unterminated string");
      const unsigned char escape = data_[at_++];
      switch (escape) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          long cp = hex4();
          if (cp < 0) return where("bad \\u escape");
          if (cp >= 0xDC00 && cp <= 0xDFFF) return where("unpaired surrogate escape (no UTF-8 form)");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            const std::size_t pair = at_;
            if (!(take('\\') && take('u'))) return where("unpaired surrogate escape (no UTF-8 form)");
            const long low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) {
              at_ = pair;
              return where("unpaired surrogate escape (no UTF-8 form)");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          return where("bad escape");
      }
    }
  }

  const unsigned char* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

}  // namespace

std::string invalid_utf8_reason(const char* text, std::size_t size) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text);
  for (std::size_t at = 0; at < size;) {
    const std::size_t start = at;
    if (decode_utf8(bytes, size, at) < 0) return "not valid UTF-8 at byte " + std::to_string(start);
  }
  return "";
}

std::string encode_key_block(const std::vector<Key>& keys) {
  std::string out = "[";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i) out += ", ";
    if (keys[i]) append_json_string(out, *keys[i]);
    else out += "null";
  }
  out += ']';
  return out;
}

std::string decode_key_block(const unsigned char* data, std::size_t size, std::vector<Key>& keys) {
  keys.clear();
  return Parser(data, size).list(keys);
}

}  // namespace crosslayer::capi
