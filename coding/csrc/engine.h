// Arithmetic coding engine of DeepCABAC (spec nnc-bitstream.md §4, §5): context models with the dual-rate
// probability state, the M-coder style encoder and decoder. The per-bin paths are defined here so that they
// inline into the level loops of the other units; engine.cpp holds the cold parts and the raw-engine test API.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "nnc_core.h"
#include "tables.h"

namespace nnc::detail {

// Step sizes of the probability update, indexed 16 + (signed state >> k) (spec §5.4).
inline constexpr int32_t kCurve[32] = {2512, 2288, 2064, 1840, 1616, 1392, 1168, 944, 720, 560, 464,
                                       368,  272,  208,  144,  80,   64,   64,   64,   64,  64,  64,
                                       64,   64,   64,   64,   64,   64,   64,   64,   64,  0};
inline constexpr int kCurveCentre = 16;

struct EcoParams {
  int32_t sh0, sh1, p, s0;
};
// Context parameter sets selected by ecoIdx (spec §5.2).
inline constexpr int kNumEco = 9;
inline constexpr EcoParams kEco[kNumEco] = {{5, 4, 0, 0},      {5, 4, -1310, -41}, {5, 4, 3039, 95},
                                            {4, 5, 0, 0},      {6, 6, 962, 30},    {6, 6, 3039, 95},
                                            {6, 6, -673, -21}, {7, 5, 0, 0},       {7, 5, 962, 30}};

// Value ranges of the two halves of a state (spec §5.6: |s0| <= 123, |s1| <= 1923) rounded up to powers of
// two; a state v is stored in a table row at index v + centre.
inline constexpr int kMinShift = 4;
inline constexpr int kNumShifts0 = 4;  // sh0 in 4..7
inline constexpr int kNumShifts1 = 3;  // sh1 in 4..6
inline constexpr int kS0Span = 256, kS0Centre = 128;
inline constexpr int kS1Span = 4096, kS1Centre = 2048;

// Next fast (s0) and slow (s1) half of a state after a bin (spec §5.4): the halves evolve independently, so
// their updates are table look-ups. Flat rows, one per (shift, bin):
//   s0_next[s0_row(sh0, bin) + s0]   and   s1_next[s1_row(sh1, bin) + s1]
struct UpdateTables {
  int8_t s0_next[kNumShifts0 * 2 * kS0Span];
  int16_t s1_next[kNumShifts1 * 2 * kS1Span];

  static constexpr int s0_row(int sh0, int bin) { return ((sh0 - kMinShift) * 2 + bin) * kS0Span + kS0Centre; }
  static constexpr int s1_row(int sh1, int bin) { return ((sh1 - kMinShift) * 2 + bin) * kS1Span + kS1Centre; }

  // One half's update: v moves towards the bin by kCurve[16 + ((sign · v) >> precision)] >> shift.
  static constexpr int next(int v, int bin, int precision, int shift, int lo, int hi) {
    const int sg = bin ? 1 : -1;
    const int i = kCurveCentre + ((sg * v) >> precision);
    const int moved = (i >= 0 && i < 32) ? v + sg * (kCurve[i] >> shift) : v;
    return std::clamp(moved, lo, hi);
  }

  constexpr UpdateTables() : s0_next{}, s1_next{} {
    for (int sh = kMinShift; sh < kMinShift + kNumShifts0; ++sh)
      for (int b = 0; b < 2; ++b)
        for (int v = -kS0Centre; v < kS0Span - kS0Centre; ++v)
          s0_next[s0_row(sh, b) + v] = static_cast<int8_t>(next(v, b, 3, sh, -128, 127));
    for (int sh = kMinShift; sh < kMinShift + kNumShifts1; ++sh)
      for (int b = 0; b < 2; ++b)
        for (int v = -kS1Centre; v < kS1Span - kS1Centre; ++v)
          s1_next[s1_row(sh, b) + v] = static_cast<int16_t>(next(v, b, 7, sh, -2048, 2047));
  }
};
inline constexpr UpdateTables kUpdate{};

// One context model (spec §5): combined estimate p = s1 + 16·s0, its parameter set and its table rows.
struct Context {
  int32_t p, s0;
  int32_t s0_row, s1_row;  // UpdateTables rows of this context's shifts for bin 0 (bin 1: + span)
  int32_t eco;

  void init(int e) {
    const EcoParams& ep = kEco[e];
    s0_row = UpdateTables::s0_row(ep.sh0, 0);
    s1_row = UpdateTables::s1_row(ep.sh1, 0);
    p = ep.p;
    s0 = ep.s0;
    eco = e;
  }
  void reset() {
    p = kEco[eco].p;
    s0 = kEco[eco].s0;
  }
  int mps() const { return p >= 0 ? 1 : 0; }
  uint32_t lps_range(uint32_t range) const {
    const int32_t q = p >> 7;
    return kRangeLps[((range >> 5) & 7) * 32 + static_cast<uint32_t>(q < 0 ? -q : q)];
  }
  void update(int bin) {
    const int32_t s1 = p - 16 * s0;
    s0 = kUpdate.s0_next[s0_row + bin * kS0Span + s0];
    p = kUpdate.s1_next[s1_row + bin * kS1Span + s1] + 16 * s0;
  }
};

// Renormalisation shift 9 - bitlength(range) for range < 256, 0 for 256..511 (a table: portable builds would
// otherwise compile clz to the slow bsr instruction).
struct RenormTable {
  uint8_t shift[512];
  constexpr RenormTable() : shift{} {
    for (int r = 0; r < 512; ++r) {
      int n = 0;
      while (r && (r << n) < 256) ++n;
      shift[r] = static_cast<uint8_t>(n);
    }
  }
};
inline constexpr RenormTable kRenorm{};

inline int leading_shift(uint32_t range) { return kRenorm.shift[range]; }

inline constexpr int kMaxOverrunBytes = 2;  // zero bytes fed past the payload end before giving up

// ------------------------------------------------------------------------------------------ decoder engine
class ArithDecoder {
 public:
  ArithDecoder(const uint8_t* data, size_t size) : data_(data), size_(size) {
    value_ = next_byte() << 8;
    value_ |= next_byte();
  }

  // kBranchFree: select the interval with masks, so that the compiler cannot turn it into a jump. Right for
  // unpredictable bins (significance, sign); for mostly-MPS bins (long runs of greater-than flags) a
  // predicted jump is cheaper than the data dependency, so there the compiler chooses.
  template <bool kBranchFree = false>
  __attribute__((always_inline)) int decode_bin(Context& c) {
    const uint32_t lps = c.lps_range(range_);
    const uint32_t mps_range = range_ - lps;
    const uint32_t scaled = mps_range << 7;
    int bin;
    if (kBranchFree) {
      const uint32_t lps_mask = 0u - static_cast<uint32_t>(value_ >= scaled);
      bin = c.mps() ^ static_cast<int>(lps_mask & 1);
      value_ -= scaled & lps_mask;
      range_ = (lps & lps_mask) | (mps_range & ~lps_mask);
    } else {
      const uint32_t is_lps = value_ >= scaled;
      bin = c.mps() ^ static_cast<int>(is_lps);
      value_ -= is_lps ? scaled : 0u;
      range_ = is_lps ? lps : mps_range;
    }
    const int n = leading_shift(range_);  // 0 for range >= 256
    range_ <<= n;
    value_ <<= n;
    bits_needed_ += n;
    if (bits_needed_ >= 0) {
      value_ += next_byte() << bits_needed_;
      bits_needed_ -= 8;
    }
    c.update(bin);
    return bin;
  }

  uint32_t decode_bypass() {
    value_ <<= 1;
    if (++bits_needed_ >= 0) {
      value_ += next_byte();
      bits_needed_ = -8;
    }
    const uint32_t scaled = range_ << 7;
    const uint32_t bin = value_ >= scaled;  // suffix bits are random: keep it branch-free
    value_ -= bin ? scaled : 0u;
    return bin;
  }

  // n bypass bins, up to 8 per refill: identical to n single bypass bins (spec §4.3).
  uint32_t decode_bypass_bits(int n) {
    uint32_t v = 0;
    while (n > 0) {
      const int m = n < 8 ? n : 8;
      value_ <<= m;
      bits_needed_ += m;
      if (bits_needed_ >= 0) {
        value_ += next_byte() << bits_needed_;
        bits_needed_ -= 8;
      }
      uint32_t scaled = range_ << (7 + m);
      for (int i = 0; i < m; ++i) {
        scaled >>= 1;
        const uint32_t bin = value_ >= scaled;
        value_ -= bin ? scaled : 0u;
        v = (v << 1) | bin;
      }
      n -= m;
    }
    return v;
  }

  int decode_terminating();

  void reset_range() { range_ = 256; }
  int64_t bit_position() const { return 8 * static_cast<int64_t>(pos_) - 8 + bits_needed_; }
  uint32_t value8() const { return (value_ >> 7) & 255; }
  size_t consumed() const { return pos_; }

 private:
  uint32_t next_byte() {
    if (__builtin_expect(pos_ < size_, 1)) return data_[pos_++];
    return past_end_byte();
  }

  // Reading past the payload: zeros for a few bytes (the arithmetic decoder reads ahead), then an error.
  __attribute__((noinline, cold)) uint32_t past_end_byte();

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  uint32_t value_ = 0;
  uint32_t range_ = 510;
  int bits_needed_ = -8;
};

// ------------------------------------------------------------------------------------------ encoder engine
class ArithEncoder {
 public:
  void encode_bin(int bin, Context& c) {
    const uint32_t lps = c.lps_range(range_);
    range_ -= lps;
    const bool is_lps = bin != c.mps();
    low_ += is_lps ? range_ : 0u;
    range_ = is_lps ? lps : range_;
    // MPS: one shift when the range fell below 256; LPS: 9 - bitlength(rLPS) shifts (spec §4.5)
    const int n = leading_shift(range_);
    range_ <<= n;
    low_ <<= n;
    bits_left_ -= n;
    if (bits_left_ < 12) emit_byte();
    c.update(bin);
  }

  void encode_bypass(uint32_t bin) {
    low_ <<= 1;
    if (bin) low_ += range_;
    if (--bits_left_ < 12) emit_byte();
  }

  // n bypass bins, MSB first, up to 8 per step: identical to n single bypass bins (spec §4.5).
  void encode_bypass_bits(uint32_t value, int n) {
    while (n > 0) {
      const int m = n < 8 ? n : 8;
      n -= m;
      const uint32_t chunk = (value >> n) & ((1u << m) - 1);
      low_ = (low_ << m) + static_cast<uint64_t>(chunk) * range_;
      bits_left_ -= m;
      if (bits_left_ < 12) emit_byte();
    }
  }

  void reset_range() { range_ = 256; }

  // Total renormalisation shifts so far; equals the decoder's bit position (spec §4.8) at the same bin.
  int64_t bit_position() const {
    return 23 - bits_left_ + 8 * (static_cast<int64_t>(out_.size()) + pending_count_);
  }
  uint32_t low_byte() const { return static_cast<uint32_t>(low_ & 0xFF); }

  // Terminating bin with value 1 followed by the byte-exact flush (spec §4.6).
  std::vector<uint8_t> finish();

 private:
  void emit_byte() {
    const uint32_t lead = static_cast<uint32_t>(low_ >> (24 - bits_left_));
    bits_left_ += 8;
    low_ &= 0xFFFFFFFFu >> bits_left_;
    if (lead == 0xFF) {
      ++pending_count_;
    } else if (pending_count_ > 0) {
      const uint32_t carry = lead >> 8;
      out_.push_back(static_cast<uint8_t>((pending_byte_ + carry) & 0xFF));
      const uint8_t fill = static_cast<uint8_t>((0xFF + carry) & 0xFF);
      for (int64_t i = 1; i < pending_count_; ++i) out_.push_back(fill);
      pending_byte_ = lead & 0xFF;
      pending_count_ = 1;
    } else {
      pending_byte_ = lead;
      pending_count_ = 1;
    }
  }

  uint64_t low_ = 0;
  uint32_t range_ = 510;
  int bits_left_ = 23;
  int64_t pending_count_ = 0;
  uint32_t pending_byte_ = 0;
  std::vector<uint8_t> out_;
};

}  // namespace nnc::detail
