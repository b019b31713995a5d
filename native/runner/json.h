// A small JSON reader for manifest.json: objects, arrays, strings, numbers, literals.
// Enough for the manifest (no \u escapes beyond ASCII are expected there); not a general
// parser — anything it does not understand is an error with the offset.
#pragma once

#include <cctype>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgepet::json {

class Value {
 public:
  enum Kind { Null, Bool, Number, String, Array, Object };

  Kind kind = Null;
  bool boolean = false;
  double num = 0;
  std::string text;
  std::vector<Value> items;
  std::map<std::string, Value> fields;

  bool is_string() const { return kind == String; }
  const std::string& str() const {
    if (kind != String) throw std::runtime_error("manifest.json: expected a string");
    return text;
  }
  double number() const {
    if (kind != Number) throw std::runtime_error("manifest.json: expected a number");
    return num;
  }
  const std::vector<Value>& array() const {
    static const std::vector<Value> empty;
    return kind == Array ? items : empty;
  }
  // A missing key reads as null, so optional fields need no special case.
  const Value& operator[](const std::string& key) const {
    static const Value null;
    auto it = fields.find(key);
    return it == fields.end() ? null : it->second;
  }
};

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}

  Value parse() {
    Value v = value();
    space();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("manifest.json: " + what + " at offset " + std::to_string(i_));
  }
  void space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool literal(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }
  Value value() {
    space();
    if (i_ >= s_.size()) fail("unexpected end");
    Value v;
    char c = s_[i_];
    if (c == '{') {
      v.kind = Value::Object;
      ++i_;
      space();
      if (s_[i_] == '}') { ++i_; return v; }
      while (true) {
        space();
        std::string key = string();
        space();
        if (s_[i_++] != ':') fail("expected ':'");
        v.fields[key] = value();
        space();
        if (s_[i_] == ',') { ++i_; continue; }
        if (s_[i_] == '}') { ++i_; return v; }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind = Value::Array;
      ++i_;
      space();
      if (s_[i_] == ']') { ++i_; return v; }
      while (true) {
        v.items.push_back(value());
        space();
        if (s_[i_] == ',') { ++i_; continue; }
        if (s_[i_] == ']') { ++i_; return v; }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.kind = Value::String;
      v.text = string();
      return v;
    }
    if (literal("true")) { v.kind = Value::Bool; v.boolean = true; return v; }
    if (literal("false")) { v.kind = Value::Bool; return v; }
    if (literal("null")) return v;
    char* end = nullptr;
    v.num = std::strtod(s_.c_str() + i_, &end);
    if (end == s_.c_str() + i_) fail("unexpected character");
    v.kind = Value::Number;
    i_ = static_cast<size_t>(end - s_.c_str());
    return v;
  }
  std::string string() {
    if (s_[i_] != '"') fail("expected a string");
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') { out += c; continue; }
      char e = s_[i_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {  // keep ASCII, replace the rest: names in manifests are ASCII
          unsigned code = static_cast<unsigned>(std::strtoul(s_.substr(i_, 4).c_str(), nullptr, 16));
          out += code < 0x80 ? static_cast<char>(code) : '?';
          i_ += 4;
          break;
        }
        default: out += e;
      }
    }
    if (i_ >= s_.size()) fail("unterminated string");
    ++i_;
    return out;
  }

  const std::string& s_;
  size_t i_ = 0;
};

inline Value parse(const std::string& text) { return Parser(text).parse(); }

}  // namespace edgepet::json
