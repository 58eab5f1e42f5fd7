// Standalone driver for the sanitizer test (tests/test_sanitizers.py): runs the DeepCABAC core
// (every unit of coding/csrc except the binding, no torch/Python) on a corpus of records written by Python,
// under -fsanitize=address,undefined. Not part of the extension build.
//
// Corpus file: a sequence of records, all integers little-endian:
//   u8  mode            0 = decode the payload; 1 = encode the int32 levels, decode, compare;
//                       2 = trellis-quantize (f64 qscale + float32 weights), then encode, decode, compare;
//                       3 = NNR_PT_BLOCK: encode several tensors in one codeword, decode, compare, then decode
//                           truncated and bit-flipped copies of that codeword
//   i64 num_rows, i64 layer_width
//   i32 scan_order, dq, num_gtx, profile, codebook_size, codebook_zero_offset, has_qp, qp_bits,
//       row_skip, param_opt, qp_delta
//   u64 n               number of data bytes that follow (payload; 4 * element count for mode 1;
//                       8 + 4 * element count for mode 2; for mode 3: u8 tca, u8 hdsp, u32 count, then per
//                       tensor i64 rows, i64 width, i32 levels[rows * width]; the record's rows/width are
//                       ignored, its other fields apply to every tensor)
//   n bytes of data
// Output (stdout): one summary line "records=.. ok=.. bitstream_errors=.. usage_errors=.. other_errors=..
// mismatches=.. skipped=.. overruns=.. roundtrip_rejected=.. trellis_ok=.. trellis_rejected=.. blocks=..".
// Problems of the core (non-nnc exceptions, round-trip mismatches, overruns, rejected own payloads) are listed
// on stderr; the sanitizers abort the process on any memory or UB error.
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
  long blocks = 0;              // block codewords that encoded and decoded back unchanged
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

// Mode 3: a block codeword (spec §2.8) of the given tensors, with TCA bases (each tensor's levels rotated by
// one position) and HDSP histories (where the base is nonzero) when asked; both need a parent, so profile 1
// with parent_present. The own codeword must decode to the levels (without DQ); damaged copies of it may only
// raise BitstreamError (or decode).
void run_block(const nnc::LayerParams& shared, const nnc::EncodeOptions& opt, const uint8_t* data, size_t size,
               Counts& c, long index) {
  size_t pos = 0;
  auto take = [&](void* dst, size_t n) {
    if (size - pos < n) return false;
    std::memcpy(dst, data + pos, n);
    pos += n;
    return true;
  };
  uint8_t tca = 0, hdsp = 0;
  uint32_t count = 0;
  if (!take(&tca, 1) || !take(&hdsp, 1) || !take(&count, 4) || count == 0 || count > 8) {
    ++c.skipped;
    return;
  }
  std::vector<std::vector<int32_t>> levels(count), bases(count), outs(count);
  std::vector<std::vector<int8_t>> histories(count);
  std::vector<nnc::LayerParams> params(count, shared);
  for (uint32_t i = 0; i < count; ++i) {
    int64_t rows = 0, width = 0;
    if (!take(&rows, 8) || !take(&width, 8) || rows < 1 || width < 1 || rows > kMaxElements / width) {
      ++c.skipped;
      return;
    }
    const size_t n = static_cast<size_t>(rows * width);
    levels[i].resize(n);
    if (!take(levels[i].data(), n * 4)) {
      ++c.skipped;
      return;
    }
    params[i].num_rows = rows;
    params[i].layer_width = width;
    params[i].parent_present = shared.profile == 1 && (tca || hdsp);
    bases[i].resize(n);
    for (size_t j = 0; j < n; ++j) bases[i][j] = levels[i][(j + 1) % n];
    histories[i].resize(n);
    for (size_t j = 0; j < n; ++j) histories[i][j] = bases[i][j] != 0;
    if (tca && params[i].parent_present) params[i].base = bases[i].data();
    if (hdsp && params[i].parent_present) params[i].history = histories[i].data();
    outs[i].assign(n, 0);
  }
  std::vector<nnc::BlockTensor> tensors;
  for (uint32_t i = 0; i < count; ++i) {
    nnc::EncodeOptions o = opt;
    o.hdsp = hdsp && params[i].parent_present;
    tensors.push_back({levels[i].data(), params[i], o});
  }
  std::vector<int32_t*> out_ptrs;
  for (auto& o : outs) out_ptrs.push_back(o.data());
  nnc::EncodedPayload enc;
  try {
    enc = nnc::encode_block_payload(tensors);
  } catch (const nnc::UsageError&) {
    ++c.usage_errors;
    return;
  } catch (const std::exception& e) {
    ++c.other_errors;
    std::cerr << "record " << index << ": unexpected exception: " << e.what() << "\n";
    return;
  }
  try {
    nnc::DecodedBlock dec = nnc::decode_block_payload(enc.bytes.data(), enc.bytes.size(), params, out_ptrs);
    bool same = dec.consumed == enc.bytes.size() && dec.qp_deltas.size() == count;
    for (uint32_t i = 0; i < count && same; ++i) {
      same = !shared.has_qp || dec.qp_deltas[i] == opt.qp_delta;
      if (!shared.dq) same = same && outs[i] == levels[i];
    }
    if (!same) {
      ++c.mismatches;
      std::cerr << "record " << index << ": block round trip differs\n";
    } else {
      ++c.ok;
      ++c.blocks;
    }
  } catch (const nnc::BitstreamError& e) {
    ++c.roundtrip_rejected;
    std::cerr << "record " << index << ": decoder rejected the encoder's own block payload: " << e.what() << "\n";
  } catch (const std::exception& e) {
    ++c.other_errors;
    std::cerr << "record " << index << ": unexpected exception: " << e.what() << "\n";
  }
  // damaged copies: every truncation (at most 64 lengths) and one bit flip per 13 bits
  std::vector<std::vector<uint8_t>> damaged;
  const size_t len = enc.bytes.size();
  for (size_t cut = 0; cut < len; cut += 1 + len / 64) damaged.emplace_back(enc.bytes.begin(), enc.bytes.begin() + cut);
  for (size_t bit = 0; bit < len * 8; bit += 13) {
    damaged.push_back(enc.bytes);
    damaged.back()[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
  for (const auto& d : damaged) {
    std::vector<uint8_t> payload(d);  // exactly sized heap block: ASan sees reads past the end
    try {
      nnc::DecodedBlock dec = nnc::decode_block_payload(payload.empty() ? nullptr : payload.data(), payload.size(),
                                                        params, out_ptrs);
      if (dec.consumed > payload.size()) ++c.overruns;
      else ++c.ok;
    } catch (const nnc::BitstreamError&) {
      ++c.bitstream_errors;
    } catch (const std::exception& e) {
      ++c.other_errors;
      std::cerr << "record " << index << ": unexpected exception on a damaged block: " << e.what() << "\n";
    }
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
    if (mode == 3) {
      run_block(p, opt, data, n, c, index);
      continue;
    }
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
              "skipped=%ld overruns=%ld roundtrip_rejected=%ld trellis_ok=%ld trellis_rejected=%ld blocks=%ld\n",
              c.records, c.ok, c.bitstream_errors, c.usage_errors, c.other_errors, c.mismatches, c.skipped,
              c.overruns, c.roundtrip_rejected, c.trellis_ok, c.trellis_rejected, c.blocks);
  return (c.other_errors || c.mismatches) ? 1 : 0;
}
