// Standalone driver for the sanitizer test (tests/test_sanitizers.py): runs the DeepCABAC core
// (every unit of coding/csrc except the binding, no torch/Python) on a corpus of records written by Python,
// under -fsanitize=address,undefined. Not part of the extension build.
//
// Corpus file: a sequence of records, all integers little-endian:
//   u8  mode            0 = decode the payload; 1 = encode the int32 levels, decode, compare;
//                       2 = trellis-quantize (f64 qscale + float32 weights), then encode, decode, compare
//   i64 num_rows, i64 layer_width
//   i32 scan_order, dq, num_gtx, profile, codebook_size, codebook_zero_offset, has_qp, qp_bits,
//       row_skip, param_opt, qp_delta
//   u64 n               number of data bytes that follow (payload; 4 * element count for mode 1;
//                       8 + 4 * element count for mode 2)
//   n bytes of data
// Output (stdout): one summary line "records=.. ok=.. bitstream_errors=.. usage_errors=.. other_errors=..
// mismatches=.. skipped=.. overruns=.. roundtrip_rejected=.. trellis_ok=.. trellis_rejected=..". Problems of
// the core (non-nnc exceptions, round-trip mismatches, overruns, rejected own payloads) are listed on stderr;
// the sanitizers abort the process on any memory or UB error.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "nnc_core.h"

namespace {

// The driver allocates the output itself; the product checks element counts in its Python layer.
constexpr int64_t kMaxElements = int64_t{1} << 24;

struct Reader {
  const std::vector<uint8_t>& buf;
  size_t pos = 0;
  template <typename T>
  bool get(T* value) {
    if (buf.size() - pos < sizeof(T)) return false;
    std::memcpy(value, buf.data() + pos, sizeof(T));
    pos += sizeof(T);
    return true;
  }
};

struct Counts {
  long records = 0, ok = 0, bitstream_errors = 0, usage_errors = 0, other_errors = 0, mismatches = 0,
       skipped = 0;
  long overruns = 0;            // decode succeeded but reported more bytes consumed than given
  long roundtrip_rejected = 0;  // the decoder rejected a payload the encoder had accepted
  long trellis_ok = 0;          // trellis levels that encode and decode back unchanged
  long trellis_rejected = 0;    // trellis inputs rejected with UsageError (NaN, infinite, too large)
};

void run_decode(const nnc::LayerParams& p, const uint8_t* data, size_t size, Counts& c, long index) {
  std::vector<int32_t> out(static_cast<size_t>(p.num_rows * p.layer_width), 0);
  // copy into an exactly sized heap block so that ASan catches any read past the end
  std::vector<uint8_t> payload(data, data + size);
  try {
    nnc::DecodedPayload res = nnc::decode_payload(payload.empty() ? nullptr : payload.data(), payload.size(), p,
                                                  out.data());
    if (res.consumed > size) {
      // left to the caller (the NNC unit-size check); counted so the test can report it
      ++c.overruns;
      std::cerr << "record " << index << ": consumed " << res.consumed << " > size " << size << "\n";
    } else {
      ++c.ok;
    }
  } catch (const nnc::BitstreamError&) {
    ++c.bitstream_errors;
  } catch (const nnc::UsageError&) {
    ++c.usage_errors;
  } catch (const std::exception& e) {
    ++c.other_errors;
    std::cerr << "record " << index << ": unexpected exception: " << e.what() << "\n";
  }
}

void run_roundtrip(const nnc::LayerParams& p, const nnc::EncodeOptions& opt, const uint8_t* data, size_t size,
                   Counts& c, long index) {
  const size_t count = size / 4;
  std::vector<int32_t> levels(count);
  std::memcpy(levels.data(), data, count * 4);
  try {
    nnc::EncodedPayload enc = nnc::encode_payload(levels.data(), p, opt);
    std::vector<int32_t> out(count, 0);
    nnc::DecodedPayload dec = nnc::decode_payload(enc.bytes.data(), enc.bytes.size(), p, out.data());
    bool same = dec.consumed == enc.bytes.size() && (!p.has_qp || dec.qp_delta == opt.qp_delta);
    // with DQ the decoder may legitimately return a re-mapped index set (spec §11.2), so compare only without
    if (!p.dq) same = same && out == levels;
    if (!same) {
      ++c.mismatches;
      std::cerr << "record " << index << ": round trip differs\n";
    } else {
      ++c.ok;
    }
  } catch (const nnc::UsageError&) {
    ++c.usage_errors;
  } catch (const nnc::BitstreamError& e) {
    ++c.roundtrip_rejected;
    std::cerr << "record " << index << ": decoder rejected the encoder's own payload: " << e.what() << "\n";
  } catch (const std::exception& e) {
    ++c.other_errors;
    std::cerr << "record " << index << ": unexpected exception: " << e.what() << "\n";
  }
}

// Trellis levels are DQ-consistent reconstruction indices (spec §11.2), so without row skipping they survive
// an encode/decode round trip unchanged.
void run_trellis(const nnc::LayerParams& p, const uint8_t* data, size_t size, Counts& c, long index) {
  const size_t count = (size - 8) / 4;
  double qscale = 0;
  std::memcpy(&qscale, data, 8);
  std::vector<float> weights(count);
  std::memcpy(weights.data(), data + 8, count * 4);
  std::vector<int32_t> levels(count, 0);
  try {
    nnc::trellis_quantize(weights.data(), p, qscale, levels.data());
  } catch (const nnc::UsageError&) {
    ++c.trellis_rejected;
    return;
  } catch (const std::exception& e) {
    ++c.other_errors;
    std::cerr << "record " << index << ": unexpected exception: " << e.what() << "\n";
    return;
  }
  nnc::LayerParams coded = p;
  coded.dq = true;
  nnc::EncodeOptions opt;
  opt.row_skip = false;
  try {
    nnc::EncodedPayload enc = nnc::encode_payload(levels.data(), coded, opt);
    std::vector<int32_t> out(count, 0);
    nnc::decode_payload(enc.bytes.data(), enc.bytes.size(), coded, out.data());
    if (out != levels) {
      ++c.mismatches;
      std::cerr << "record " << index << ": trellis levels do not survive a round trip\n";
    } else {
      ++c.trellis_ok;
    }
  } catch (const std::exception& e) {
    ++c.other_errors;
    std::cerr << "record " << index << ": trellis levels not codable: " << e.what() << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " CORPUS_FILE\n";
    return 2;
  }
  std::ifstream file(argv[1], std::ios::binary);
  if (!file) {
    std::cerr << "cannot open " << argv[1] << "\n";
    return 2;
  }
  const std::vector<uint8_t> buf((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  Reader r{buf};
  Counts c;
  while (r.pos < buf.size()) {
    uint8_t mode = 0;
    int64_t rows = 0, width = 0;
    int32_t f[11] = {};
    uint64_t n = 0;
    bool ok = r.get(&mode) && r.get(&rows) && r.get(&width);
    for (int32_t& v : f) ok = ok && r.get(&v);
    ok = ok && r.get(&n) && n <= buf.size() - r.pos;
    if (!ok) {
      std::cerr << "corpus file is malformed at byte " << r.pos << "\n";
      return 2;
    }
    const uint8_t* data = buf.data() + r.pos;
    r.pos += n;
    const long index = c.records++;
    nnc::LayerParams p;
    p.num_rows = rows;
    p.layer_width = width;
    p.scan_order = f[0];
    p.dq = f[1] != 0;
    p.num_gtx = f[2];
    p.profile = f[3];
    p.codebook_size = f[4];
    p.codebook_zero_offset = f[5];
    p.has_qp = f[6] != 0;
    p.qp_bits = f[7];
    nnc::EncodeOptions opt;
    opt.row_skip = f[8] != 0;
    opt.param_opt = f[9] != 0;
    opt.qp_delta = f[10];
    if (rows < 1 || width < 1 || rows > kMaxElements / width) {
      ++c.skipped;
      continue;
    }
    if (mode == 0) {
      run_decode(p, data, n, c, index);
    } else if (mode == 1 && n == static_cast<uint64_t>(rows * width) * 4) {
      run_roundtrip(p, opt, data, n, c, index);
    } else if (mode == 2 && n == 8 + static_cast<uint64_t>(rows * width) * 4) {
      run_trellis(p, data, n, c, index);
    } else {
      ++c.skipped;
    }
  }
  std::printf("records=%ld ok=%ld bitstream_errors=%ld usage_errors=%ld other_errors=%ld mismatches=%ld "
              "skipped=%ld overruns=%ld roundtrip_rejected=%ld trellis_ok=%ld trellis_rejected=%ld\n",
              c.records, c.ok, c.bitstream_errors, c.usage_errors, c.other_errors, c.mismatches, c.skipped,
              c.overruns, c.roundtrip_rejected, c.trellis_ok, c.trellis_rejected);
  return (c.other_errors || c.mismatches) ? 1 : 0;
}
