// Cold parts of the arithmetic coding engine (termination, flush, reading past the end) and the raw-engine
// test API of nnc_core.h (trace_context, encode_bin_script, decode_bin_script).
#include "engine.h"

#include <string>
#include <utility>

namespace nnc {
namespace detail {

int ArithDecoder::decode_terminating() {
  range_ -= 2;
  const uint32_t scaled = range_ << 7;
  if (value_ >= scaled) return 1;
  if (range_ < 256) {
    range_ <<= 1;
    value_ <<= 1;
    if (++bits_needed_ == 0) {
      value_ += next_byte();
      bits_needed_ = -8;
    }
  }
  return 0;
}

uint32_t ArithDecoder::past_end_byte() {
  ++pos_;
  if (pos_ > size_ + kMaxOverrunBytes)
    throw BitstreamError("CABAC payload ends before the coded data is complete (truncated or corrupt NDU)");
  return 0;
}

std::vector<uint8_t> ArithEncoder::finish() {
  range_ -= 2;
  low_ += range_;
  low_ <<= 7;
  range_ = 256;
  bits_left_ -= 7;
  if (bits_left_ < 12) emit_byte();
  if (low_ >> (32 - bits_left_)) {
    out_.push_back(static_cast<uint8_t>((pending_byte_ + 1) & 0xFF));
    for (int64_t i = 1; i < pending_count_; ++i) out_.push_back(0x00);
    low_ -= uint64_t(1) << (32 - bits_left_);
  } else {
    if (pending_count_ > 0) out_.push_back(static_cast<uint8_t>(pending_byte_));
    for (int64_t i = 1; i < pending_count_; ++i) out_.push_back(0xFF);
  }
  int nbits = 24 - bits_left_ + 1;
  uint64_t v = ((low_ >> 8) << 1) | 1u;
  const int pad = (8 - nbits % 8) % 8;
  v <<= pad;
  nbits += pad;
  for (int sh = nbits - 8; sh >= 0; sh -= 8) out_.push_back(static_cast<uint8_t>((v >> sh) & 0xFF));
  return std::move(out_);
}

}  // namespace detail

namespace {

using detail::ArithDecoder;
using detail::ArithEncoder;
using detail::Context;

constexpr int kScriptContexts = 64;
constexpr int kMaxScriptBypassBits = 32;

void check_script(const std::vector<int>& kinds, const std::vector<int>& args) {
  if (kinds.size() != args.size()) throw UsageError("script kinds and args differ in length");
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (kinds[i] == 0 && (args[i] < 0 || args[i] >= kScriptContexts))
      throw UsageError("script context index must be 0..63");
    if (kinds[i] == 1 && (args[i] < 1 || args[i] > kMaxScriptBypassBits))
      throw UsageError("script bypass width must be 1..32");
    if (kinds[i] < 0 || kinds[i] > 2) throw UsageError("script op kind must be 0, 1 or 2");
  }
}

}  // namespace

std::vector<std::pair<int, int>> trace_context(int eco, const std::vector<int>& bins) {
  if (eco < 0 || eco >= detail::kNumEco) throw UsageError("ecoIdx must be 0..8");
  Context c;
  c.init(eco);
  std::vector<std::pair<int, int>> out;
  for (int b : bins) {
    c.update(b ? 1 : 0);
    out.push_back({c.s0, c.p});
  }
  return out;
}

std::vector<uint8_t> encode_bin_script(const std::vector<int>& kinds, const std::vector<int>& args,
                                       const std::vector<uint32_t>& values) {
  check_script(kinds, args);
  if (values.size() != kinds.size()) throw UsageError("script values and kinds differ in length");
  std::vector<Context> ctx(kScriptContexts);
  for (Context& c : ctx) c.init(0);
  ArithEncoder enc;
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (kinds[i] == 0) enc.encode_bin(values[i] ? 1 : 0, ctx[args[i]]);
    else if (kinds[i] == 1) enc.encode_bypass_bits(values[i], args[i]);
    else enc.reset_range();
  }
  return enc.finish();
}

std::vector<uint32_t> decode_bin_script(const uint8_t* data, size_t size, const std::vector<int>& kinds,
                                        const std::vector<int>& args, size_t* consumed) {
  check_script(kinds, args);
  std::vector<Context> ctx(kScriptContexts);
  for (Context& c : ctx) c.init(0);
  ArithDecoder dec(data, size);
  std::vector<uint32_t> out;
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (kinds[i] == 0) out.push_back(static_cast<uint32_t>(dec.decode_bin(ctx[args[i]])));
    else if (kinds[i] == 1) out.push_back(dec.decode_bypass_bits(args[i]));
    else {
      dec.reset_range();
      out.push_back(0);
    }
  }
  if (dec.decode_terminating() != 1) throw BitstreamError("terminating bin not found");
  *consumed = dec.consumed();
  return out;
}

}  // namespace nnc
