// numpy .npz (np.savez: an uncompressed zip of .npy files, zip64 extras included) and
// .npy (format 1.0-3.0, little-endian, C order) reading for reference/.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgepet {

struct Array {
  std::string descr;           // numpy dtype string, e.g. "<f4"
  std::vector<int64_t> shape;
  std::vector<char> data;      // C-order bytes
};

namespace npz_detail {

inline uint64_t le(const char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

inline std::string field(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error(".npy header has no " + key);
  return header.substr(header.find(':', at) + 1);
}

inline Array parse_npy(const std::string& name, const char* p, size_t size) {
  if (size < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0)
    throw std::runtime_error(name + " is not a .npy array");
  int major = static_cast<unsigned char>(p[6]);
  size_t header_len = major == 1 ? le(p + 8, 2) : le(p + 8, 4);
  size_t offset = major == 1 ? 10 : 12;
  std::string header(p + offset, header_len);
  Array a;
  std::string descr = field(header, "descr");
  size_t q = descr.find('\'');
  a.descr = descr.substr(q + 1, descr.find('\'', q + 1) - q - 1);
  if (field(header, "fortran_order").find("True") < field(header, "fortran_order").find(','))
    throw std::runtime_error(name + " is Fortran-ordered; save it C-ordered");
  std::string shape = field(header, "shape");
  shape = shape.substr(shape.find('(') + 1, shape.find(')') - shape.find('(') - 1);
  std::stringstream s(shape);
  std::string dim;
  while (std::getline(s, dim, ','))
    if (dim.find_first_not_of(' ') != std::string::npos) a.shape.push_back(std::stoll(dim));
  a.data.assign(p + offset + header_len, p + size);
  return a;
}

}  // namespace npz_detail

// Arrays of an .npz by name (without ".npy"), found through the zip's central directory.
inline std::map<std::string, Array> read_npz(const std::string& path) {
  using npz_detail::le;
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::string z((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t eocd = z.rfind(std::string("PK\x05\x06", 4));
  if (eocd == std::string::npos || eocd + 22 > z.size())
    throw std::runtime_error(path + " is not a zip (.npz) file");
  uint64_t entries = le(&z[eocd + 10], 2), cd = le(&z[eocd + 16], 4);
  if (cd == 0xFFFFFFFFu || entries == 0xFFFFu) {  // zip64 end of central directory
    size_t locator = z.rfind(std::string("PK\x06\x07", 4), eocd);
    size_t record = le(&z[locator + 8], 8);
    entries = le(&z[record + 32], 8);
    cd = le(&z[record + 48], 8);
  }
  std::map<std::string, Array> arrays;
  size_t p = cd;
  for (uint64_t e = 0; e < entries; ++e) {
    if (z.compare(p, 4, "PK\x01\x02", 4) != 0) throw std::runtime_error(path + ": bad zip");
    int method = static_cast<int>(le(&z[p + 10], 2));
    uint64_t csize = le(&z[p + 20], 4), usize = le(&z[p + 24], 4);
    size_t name_len = le(&z[p + 28], 2), extra_len = le(&z[p + 30], 2),
           comment_len = le(&z[p + 32], 2);
    uint64_t local = le(&z[p + 42], 4);
    std::string name = z.substr(p + 46, name_len);
    // zip64 extra: the 64-bit values of the fields that read 0xFFFFFFFF, in order.
    for (size_t x = p + 46 + name_len; x + 4 <= p + 46 + name_len + extra_len;) {
      size_t id = le(&z[x], 2), len = le(&z[x + 2], 2), at = x + 4;
      if (id == 1) {
        if (usize == 0xFFFFFFFFu) { usize = le(&z[at], 8); at += 8; }
        if (csize == 0xFFFFFFFFu) { csize = le(&z[at], 8); at += 8; }
        if (local == 0xFFFFFFFFu) { local = le(&z[at], 8); }
      }
      x += 4 + len;
    }
    if (method != 0)
      throw std::runtime_error(path + ": " + name + " is compressed; reference files are "
                               "written with numpy.savez (stored), not savez_compressed");
    size_t data = local + 30 + le(&z[local + 26], 2) + le(&z[local + 28], 2);
    std::string key = name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0
                          ? name.substr(0, name.size() - 4) : name;
    arrays[key] = npz_detail::parse_npy(name, &z[data], csize);
    p += 46 + name_len + extra_len + comment_len;
  }
  return arrays;
}

}  // namespace edgepet
