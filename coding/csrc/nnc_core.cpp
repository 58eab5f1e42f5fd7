// DeepCABAC engine, context modelling, binarization, scans, row skipping and dependent quantization of the
// NNC bitstream (spec nnc-bitstream.md §3-§11, Appendices C and D). Plain C++17.
#include "nnc_core.h"

#include <algorithm>
#include <cfloat>
#include <cstddef>
#include <cmath>
#include <limits>
#include <utility>

#include "tables.h"

namespace nnc {
namespace {

constexpr int32_t kCurve[32] = {2512, 2288, 2064, 1840, 1616, 1392, 1168, 944, 720, 560, 464,
                                368,  272,  208,  144,  80,   64,   64,   64,   64,  64,  64,
                                64,   64,   64,   64,   64,   64,   64,   64,   64,  0};

struct EcoParams {
  int32_t sh0, sh1, p, s0;
};
// Context parameter sets selected by ecoIdx (spec §5.2).
constexpr EcoParams kEco[9] = {{5, 4, 0, 0},    {5, 4, -1310, -41}, {5, 4, 3039, 95},
                               {4, 5, 0, 0},    {6, 6, 962, 30},    {6, 6, 3039, 95},
                               {6, 6, -673, -21}, {7, 5, 0, 0},     {7, 5, 962, 30}};
constexpr int kNumEco = 9;

// Dependent-quantization state transitions T[state][parity] (spec §11.1).
constexpr uint8_t kTrans[8][2] = {{0, 2}, {7, 5}, {1, 3}, {6, 4}, {2, 0}, {5, 7}, {3, 1}, {4, 6}};

constexpr int kMaxOverrunBytes = 2;       // zero bytes fed past the payload end before giving up
constexpr int64_t kMaxAbsLevel = 2147483647;
constexpr int kMaxRemainderPrefix = 31;

// The fast (s0) and slow (s1) halves of a context state evolve independently (spec §5.4), so their updates are
// table lookups: kS0Next[shift - 4][bin][s0 + 128], kS1Next[shift - 4][bin][s1 + 2048].
struct UpdateTables {
  int8_t s0_next[4][2][256];
  int16_t s1_next[3][2][4096];

  UpdateTables() {
    for (int sh = 4; sh <= 7; ++sh)
      for (int b = 0; b < 2; ++b)
        for (int v = -128; v < 128; ++v) {
          const int sg = b ? 1 : -1;
          const int i = 16 + ((sg * v) >> 3);
          const int next = (i >= 0 && i < 32) ? v + sg * (kCurve[i] >> sh) : v;
          s0_next[sh - 4][b][v + 128] = static_cast<int8_t>(std::clamp(next, -128, 127));
        }
    for (int sh = 4; sh <= 6; ++sh)
      for (int b = 0; b < 2; ++b)
        for (int v = -2048; v < 2048; ++v) {
          const int sg = b ? 1 : -1;
          const int i = 16 + ((sg * v) >> 7);
          const int next = (i >= 0 && i < 32) ? v + sg * (kCurve[i] >> sh) : v;
          s1_next[sh - 4][b][v + 2048] = static_cast<int16_t>(std::clamp(next, -2048, 2047));
        }
  }
};

const UpdateTables& update_tables() {
  static const UpdateTables tables;
  return tables;
}

struct Context {
  int32_t p, s0;
  const int8_t* s0_next;    // row pair of UpdateTables::s0_next for this context's sh0, centred at s0 = 0
  const int16_t* s1_next;   // row pair of UpdateTables::s1_next for sh1, centred at s1 = 0
  int32_t eco;

  void init(int e) {
    const EcoParams& ep = kEco[e];
    const UpdateTables& t = update_tables();
    s0_next = &t.s0_next[ep.sh0 - 4][0][128];
    s1_next = &t.s1_next[ep.sh1 - 4][0][2048];
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
    s0 = s0_next[bin * 256 + s0];
    p = s1_next[bin * 4096 + s1] + 16 * s0;
  }
};

// Renormalisation shift 9 - bitlength(range) for range < 256, 0 for 256..511 (a table: portable builds would
// otherwise compile clz to the slow bsr instruction).
struct RenormTable {
  uint8_t shift[512];
  RenormTable() {
    for (int r = 0; r < 512; ++r) {
      int n = 0;
      while (r && (r << n) < 256) ++n;
      shift[r] = static_cast<uint8_t>(n);
    }
  }
};
const RenormTable kRenorm;

inline int leading_shift(uint32_t range) { return kRenorm.shift[range]; }

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

  int decode_terminating() {
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
  __attribute__((noinline, cold)) uint32_t past_end_byte() {
    ++pos_;
    if (pos_ > size_ + kMaxOverrunBytes)
      throw BitstreamError("CABAC payload ends before the coded data is complete (truncated or corrupt NDU)");
    return 0;
  }

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
  std::vector<uint8_t> finish() {
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

// ------------------------------------------------------------------------------------------ layout
struct Layout {
  static constexpr int kSign = 48;
  static constexpr int kGtx = 53;
  int num_gtx, rem, eco_flag, row_skip, size;
  explicit Layout(int n)
      : num_gtx(n), rem(53 + 4 * n), eco_flag(53 + 4 * n + 34), row_skip(53 + 4 * n + 36), size(90 + 4 * n) {}
};

inline int neighbour_class(int64_t nb) { return nb == 0 ? 0 : (nb < 0 ? 1 : 2); }

struct EcoEntry {
  int ctx;
  bool signalled;
};

// Contexts whose parameter set is signalled, in bitstream order (spec §8.1, no TCA/HDSP).
std::vector<EcoEntry> eco_list(const Layout& L, bool dq, int cb_size, int cb_zero) {
  std::vector<EcoEntry> out;
  const bool any = cb_size != 1;
  for (int i = 0; i < (dq ? 24 : 3); ++i) out.push_back({i, any});
  const bool sign = any && !(cb_size > 0 && (cb_zero == 0 || cb_zero == cb_size - 1));
  for (int i = 0; i < 3; ++i) out.push_back({Layout::kSign + i, sign});
  const int64_t max_abs = cb_size > 0 ? std::max(cb_zero, cb_size - 1 - cb_zero) : -1;
  for (int a = 0; a < 2 * L.num_gtx; ++a) out.push_back({Layout::kGtx + a, max_abs == -1 || a < 2 * max_abs});
  int64_t level = L.num_gtx - 1;
  for (int a = 0; a < 31; ++a) {
    level += int64_t(1) << a;
    out.push_back({L.rem + a, max_abs == -1 || level < max_abs});
  }
  return out;
}

struct Geometry {
  int64_t rows, width, count;
  int so;             // effective scan order
  int64_t block;      // 4 << so (0 for scan 0)
  int64_t block_rows; // number of block rows (1 for scan 0)
};

void check_params(const LayerParams& p) {
  if (p.num_rows < 1 || p.layer_width < 1)
    throw UsageError("tensor dimensions must be positive (got rows=" + std::to_string(p.num_rows) +
                     ", layer_width=" + std::to_string(p.layer_width) + ")");
  if (p.num_rows > std::numeric_limits<int64_t>::max() / p.layer_width)
    throw UsageError("tensor has too many elements");
  if (p.scan_order < 0 || p.scan_order > 4)
    throw UsageError("scan_order must be 0..4, got " + std::to_string(p.scan_order));
  if (p.num_gtx < 1 || p.num_gtx > 256)
    throw UsageError("cabac_unary_length_minus1 + 1 must be 1..256, got " + std::to_string(p.num_gtx));
  if (p.profile != 0 && p.profile != 1)
    throw UsageError("general_profile_idc must be 0 or 1, got " + std::to_string(p.profile));
  if (p.codebook_size < 0 || (p.codebook_size > 0 &&
                              (p.codebook_zero_offset < 0 || p.codebook_zero_offset >= p.codebook_size)))
    throw UsageError("codebook zero offset must lie in [0, codebook_size)");
  if (p.has_qp && (p.qp_bits < 6 || p.qp_bits > 13)) throw UsageError("qp delta width must be 6..13 bits");
}

Geometry make_geometry(const LayerParams& p) {
  Geometry g;
  g.rows = p.num_rows;
  g.width = p.layer_width;
  g.count = p.num_rows * p.layer_width;
  g.so = effective_scan_order(p);
  g.block = g.so ? (int64_t(4) << g.so) : 0;
  g.block_rows = g.so ? (g.rows + g.block - 1) / g.block : 1;
  return g;
}

// State reached from `s` after `width` parity-0 transitions (row skipping, spec §10). The parity-0 graph
// has cycles of length 1, 2 and 4, so width mod 4 steps suffice.
void skip_advance_table(int64_t width, uint8_t table[8]) {
  for (int s = 0; s < 8; ++s) {
    int t = s;
    for (int64_t i = 0; i < width % 4; ++i) t = kTrans[t][0];
    table[s] = static_cast<uint8_t>(t);
  }
}

// Walks the coded positions in scan order (spec Appendix C/D): skipped row segments advance the DQ state,
// visit(pos, state) -> next state for every coded position, boundary(state) after each block row but the last.
template <class Visit, class Boundary>
void walk(const Geometry& g, const uint8_t* zero_rows, bool dq, Visit&& visit, Boundary&& boundary) {
  uint8_t advance[8];
  skip_advance_table(g.width, advance);
  int state = 0;
  const int64_t W = g.width;
  if (g.so == 0) {
    for (int64_t y = 0; y < g.rows; ++y) {
      if (zero_rows && zero_rows[y]) {
        if (dq) state = advance[state];
        continue;
      }
      const int64_t base = y * W;
      for (int64_t x = 0; x < W; ++x) state = visit(base + x, state);
    }
    return;
  }
  const int64_t B = g.block;
  for (int64_t by = 0; by < g.rows; by += B) {
    const int64_t y_end = std::min(by + B, g.rows);
    for (int64_t bx = 0; bx < W; bx += B) {
      const int64_t x_end = std::min(bx + B, W);
      for (int64_t y = by; y < y_end; ++y) {
        if (zero_rows && zero_rows[y]) {
          if (dq) state = advance[state];
          continue;
        }
        const int64_t base = y * W;
        for (int64_t x = bx; x < x_end; ++x) state = visit(base + x, state);
      }
    }
    if (y_end < g.rows) boundary(state);
  }
}

inline int64_t dq_level_from_index(int64_t r, int state) {
  if (r == 0) return 0;
  const int64_t q = state & 1;
  return r > 0 ? (r + q) >> 1 : (r - q) >> 1;
}

inline int64_t dq_index_from_level(int64_t k, int state) {
  if (k == 0) return 0;
  const int64_t q = state & 1;
  return k > 0 ? 2 * k - q : 2 * k + q;
}

bool uses_row_skip_syntax(const LayerParams& p, const Geometry& g) {
  return p.profile == 1 && g.width > 1 && g.count > g.width && p.codebook_size != 1;
}

// ------------------------------------------------------------------------------------------ level coding
struct CodebookLimits {
  bool active;  // profile-1 codebook-constrained binarization (spec §7.2)
  int size, zero;
};

constexpr int64_t kNoBound = std::numeric_limits<int64_t>::max();

// Exp-Golomb remainder rem >= 0 after all greater-than flags were 1, with context-coded prefix (spec §7.1); a
// codebook bound (the largest remainder the codebook allows, spec §7.2) ends the prefix early.
__attribute__((noinline)) void encode_remainder(ArithEncoder& enc, Context* ctx, const Layout& L, int64_t rem,
                                                int64_t bound) {
  int64_t base = 0;
  int t = 0;
  while (t < kMaxRemainderPrefix) {
    const int more = rem >= base + (int64_t(1) << t);
    enc.encode_bin(more, ctx[L.rem + t]);
    if (!more) break;
    base += int64_t(1) << t;
    ++t;
    if (base + (int64_t(1) << t) > bound) break;
  }
  enc.encode_bypass_bits(static_cast<uint32_t>(rem - base), t);
}

// Rest of a non-zero level after its significance bin (spec §7.1/§7.2).
void encode_nonzero_level(ArithEncoder& enc, Context* ctx, const Layout& L, int64_t k, int nbc,
                          const CodebookLimits& cb) {
  const int neg = k < 0;
  if (!(cb.active && (cb.zero == 0 || cb.zero == cb.size - 1))) enc.encode_bin(neg, ctx[Layout::kSign + nbc]);
  const int64_t a = neg ? -k : k;
  const int64_t max_abs = cb.active ? (neg ? cb.zero : cb.size - 1 - cb.zero) : kMaxAbsLevel + 1;
  if (max_abs <= 1) return;
  Context* gtx = ctx + Layout::kGtx + neg;
  int64_t known = 1;
  int flag = 0;
  for (int j = 0; j < L.num_gtx; ++j) {
    flag = a > j + 1;
    enc.encode_bin(flag, gtx[2 * j]);
    known += flag;
    if (!flag || known >= max_abs) break;
  }
  if (!flag || known >= max_abs) return;
  encode_remainder(enc, ctx, L, a - known, cb.active ? max_abs - known : kNoBound);
}

// Rest of a nonzero level without codebook bounds (spec §7.1): the common case, inlined into the coding loop.
__attribute__((always_inline)) inline void encode_plain_nonzero(ArithEncoder& enc, Context* ctx, const Layout& L,
                                                                int64_t k, int nbc) {
  const int neg = k < 0;
  enc.encode_bin(neg, ctx[Layout::kSign + nbc]);
  const int64_t a = neg ? -k : k;
  Context* gtx = ctx + Layout::kGtx + neg;
  const int n = L.num_gtx;
  for (int j = 0; j < n; ++j) {
    const int flag = a > j + 1;
    enc.encode_bin(flag, gtx[2 * j]);
    if (!flag) return;
  }
  encode_remainder(enc, ctx, L, a - n - 1, kNoBound);
}

// Rest of a level after a significance bin of 1 (spec §7.1); the plain binarization without codebook bounds.
inline int64_t decode_plain_nonzero(ArithDecoder& dec, Context* ctx, const Layout& L, int nbc) {
  const int neg = dec.decode_bin<true>(ctx[Layout::kSign + nbc]);
  Context* gtx = ctx + Layout::kGtx + neg;
  int64_t a = 1;
  int j = 0;
  while (j < L.num_gtx && dec.decode_bin(gtx[2 * j])) ++j;
  a += j;
  if (j == L.num_gtx) {
    int t = 0;
    while (t < kMaxRemainderPrefix && dec.decode_bin(ctx[L.rem + t])) {
      a += int64_t(1) << t;
      ++t;
    }
    a += dec.decode_bypass_bits(t);
    if (a > kMaxAbsLevel) throw BitstreamError("decoded level magnitude exceeds the int32 range");
  }
  return neg ? -a : a;
}

// Rest of a level after a significance bin of 1, codebook-constrained variant (spec §7.2).
int64_t decode_codebook_nonzero(ArithDecoder& dec, Context* ctx, const Layout& L, int nbc,
                                const CodebookLimits& cb) {
  int neg;
  if (cb.zero == 0 || cb.zero == cb.size - 1)
    neg = cb.zero != 0;
  else
    neg = dec.decode_bin(ctx[Layout::kSign + nbc]);
  const int64_t max_abs = neg ? cb.zero : cb.size - 1 - cb.zero;
  int64_t a = 1;
  if (max_abs > 1) {
    Context* gtx = ctx + Layout::kGtx + neg;
    int flag = 0;
    for (int j = 0; j < L.num_gtx; ++j) {
      flag = dec.decode_bin(gtx[2 * j]);
      a += flag;
      if (!flag || a >= max_abs) break;
    }
    if (flag && a < max_abs) {
      int t = 0;
      while (t < kMaxRemainderPrefix) {
        if (!dec.decode_bin(ctx[L.rem + t])) break;
        a += int64_t(1) << t;
        ++t;
        if (a + (int64_t(1) << t) > max_abs) break;
      }
      a += dec.decode_bypass_bits(t);
    }
  }
  if (a > max_abs) throw BitstreamError("decoded codebook index outside the codebook");
  return neg ? -a : a;
}

// ------------------------------------------------------------------------------------------ ecoIdx choice
// The pseudo-coding pass of spec §8.2: every context-coded bin of the tensor is replayed through nine candidate
// states per context (one per ecoIdx), summing bit estimates. It dominates encode time, so it is organised for
// throughput:
// * binarization is columnar: positions are gathered in chunks, then every context's bins of the chunk are
//   produced as one contiguous run (significance and sign bins by scatter, greater-than and remainder-prefix
//   bins level by level over the shrinking list of magnitudes that reach the level) and replayed at once;
// * candidates with the same shifts whose states have become equal stay equal for good: each run replays
//   only one representative per group of equal states (on Laplacian-distributed levels ecoIdx 4, 5, 6 were
//   equal for ~98 % of the bins, 0 and 1 for 55-73 %) and credits its sum to every member;
// * candidates 3 and 7 share their slow part (same shift and initial value) and candidate 7's fast part never
//   leaves 0 (shift 7 rounds every step at 0 to nothing), so candidate 7 costs one load per bin;
// * the replay keeps states in registers, addresses all tables through one per-bin-value block, and spends
//   three loads and three ALU operations per candidate and bin.

// Tables of the candidate replay for one bin value; every lookup is [block + scaled index + constant offset].
// Fast parts are held as 2·s0 (the byte offset of s0 in an int16 row), slow parts as s1. Padding to a
// power-of-two size makes the block address one shift of the bin (no over-alignment needed).
struct alignas(64) ReplayBlock {
  uint32_t est[1024];        // est[512 + (p >> 3)]: bit estimate of this bin value (Appendix B)
  int16_t s0_next[4][256];   // [sh0 - 4][s0 + 128] -> 2 · next s0
  int16_t s1_next[3][4096];  // [sh1 - 4][s1 + 2048] -> next s1
  uint8_t padding[2048];
};
static_assert(sizeof(ReplayBlock) == 32768, "replay block must be a power of two in size");

struct ReplayTables {
  ReplayBlock block[2];
  ReplayTables() {
    const UpdateTables& t = update_tables();
    for (int b = 0; b < 2; ++b) {
      for (int i = 0; i < 1024; ++i) block[b].est[i] = kBitEstimate[i][b];
      for (int sh = 0; sh < 4; ++sh)
        for (int v = 0; v < 256; ++v) block[b].s0_next[sh][v] = static_cast<int16_t>(2 * t.s0_next[sh][b][v]);
      for (int sh = 0; sh < 3; ++sh)
        for (int v = 0; v < 4096; ++v) block[b].s1_next[sh][v] = t.s1_next[sh][b][v];
    }
  }
};

const ReplayTables& replay_tables() {
  static const ReplayTables tables;
  return tables;
}

constexpr intptr_t kEstAt = offsetof(ReplayBlock, est) + 512 * sizeof(uint32_t);
constexpr intptr_t s0_at(int sh0) { return offsetof(ReplayBlock, s0_next) + (sh0 - 4) * 512 + 128 * 2; }
constexpr intptr_t s1_at(int sh1) { return offsetof(ReplayBlock, s1_next) + (sh1 - 4) * 8192 + 2048 * 2; }

template <class T>
inline T table_at(const char* block, intptr_t byte_offset) {
  return *reinterpret_cast<const T*>(block + byte_offset);
}

// One candidate's bit estimate and update for the bin whose table block is `block` (f = 2·s0, s = s1); E
// names an ecoIdx with the candidate's shifts.
template <int E>
inline void candidate_step(const char* block, intptr_t& f, intptr_t& s, uint32_t& acc) {
  acc += table_at<uint32_t>(block, kEstAt + 4 * ((s >> 3) + f));  // (s1 + 16·s0) >> 3 == (s1 >> 3) + 2·s0
  f = table_at<int16_t>(block, s0_at(kEco[E].sh0) + f);
  s = table_at<int16_t>(block, s1_at(kEco[E].sh1) + 2 * s);
}

inline const char* block_of(const char* blocks, uint8_t bin) {
  return blocks + (static_cast<intptr_t>(bin) << 15);
}

constexpr bool same_shifts(int a, int b) { return kEco[a].sh0 == kEco[b].sh0 && kEco[a].sh1 == kEco[b].sh1; }
static_assert(same_shifts(0, 1) && same_shifts(0, 2) && same_shifts(4, 5) && same_shifts(4, 6),
              "groups 0-2 and 4-6 must share their shifts");
static_assert(kEco[3].sh1 == kEco[7].sh1 && kEco[3].p == 0 && kEco[3].s0 == 0 && kEco[7].p == 0 &&
                  kEco[7].s0 == 0 && (kCurve[16] >> kEco[7].sh0) == 0,
              "the candidate 3/7 sharing assumes equal slow parts and a fast part of 7 fixed at 0");

// Partial sums stay in 32 bits: a run holds at most kMaxRun bins of at most 2^18 each.
constexpr int64_t kMaxRun = 4096;
static_assert(kMaxRun * 262144 <= int64_t(UINT32_MAX), "replay partial sums must fit 32 bits");

// K distinct states of group 0-2, plus candidates 3 and 7.
template <int K>
void replay_group0_with_3_7(const char* blocks, const uint8_t* bins, int64_t n, intptr_t (&f)[3],
                            intptr_t (&g)[3], uint32_t (&c)[3], intptr_t& f3, intptr_t& g3, uint32_t& c3,
                            uint32_t& c7) {
  intptr_t lf[K], lg[K];
  uint32_t lc[K] = {};
  for (int k = 0; k < K; ++k) lf[k] = f[k], lg[k] = g[k];
  intptr_t a3 = f3, b3 = g3;
  uint32_t d3 = 0, d7 = 0;
  for (const uint8_t* it = bins; it != bins + n; ++it) {
    const char* block = block_of(blocks, *it);
    d7 += table_at<uint32_t>(block, kEstAt + 4 * (b3 >> 3));
    candidate_step<3>(block, a3, b3, d3);
    for (int k = 0; k < K; ++k) candidate_step<0>(block, lf[k], lg[k], lc[k]);
  }
  for (int k = 0; k < K; ++k) f[k] = lf[k], g[k] = lg[k], c[k] = lc[k];
  f3 = a3, g3 = b3, c3 = d3, c7 = d7;
}

// M distinct states of group 4-6, plus candidate 8.
template <int M>
void replay_group4_with_8(const char* blocks, const uint8_t* bins, int64_t n, intptr_t (&f)[3], intptr_t (&g)[3],
                          uint32_t (&c)[3], intptr_t& f8, intptr_t& g8, uint32_t& c8) {
  intptr_t lf[M], lg[M];
  uint32_t lc[M] = {};
  for (int k = 0; k < M; ++k) lf[k] = f[k], lg[k] = g[k];
  intptr_t a8 = f8, b8 = g8;
  uint32_t d8 = 0;
  for (const uint8_t* it = bins; it != bins + n; ++it) {
    const char* block = block_of(blocks, *it);
    candidate_step<8>(block, a8, b8, d8);
    for (int k = 0; k < M; ++k) candidate_step<4>(block, lf[k], lg[k], lc[k]);
  }
  for (int k = 0; k < M; ++k) f[k] = lf[k], g[k] = lg[k], c[k] = lc[k];
  f8 = a8, g8 = b8, c8 = d8;
}

struct CandidateStates {
  int32_t s0[kNumEco], s1[kNumEco];
  uint64_t acc[kNumEco];

  void reset_states() {
    for (int e = 0; e < kNumEco; ++e) {
      s0[e] = kEco[e].s0;
      s1[e] = kEco[e].p - 16 * kEco[e].s0;
    }
  }

  // Feeds a context's next n bins (n <= kMaxRun) through all nine candidates.
  void replay(const uint8_t* bins, int64_t n) {
    if (n == 0) return;
    const char* blocks = reinterpret_cast<const char*>(replay_tables().block);
    Group g0(*this, 0), g4(*this, 4);
    intptr_t f3 = 2 * s0[3], s3 = s1[3], f8 = 2 * s0[8], s8 = s1[8];
    uint32_t c3, c7, c8;
    switch (g0.distinct) {
      case 1: replay_group0_with_3_7<1>(blocks, bins, n, g0.f, g0.s, g0.c, f3, s3, c3, c7); break;
      case 2: replay_group0_with_3_7<2>(blocks, bins, n, g0.f, g0.s, g0.c, f3, s3, c3, c7); break;
      default: replay_group0_with_3_7<3>(blocks, bins, n, g0.f, g0.s, g0.c, f3, s3, c3, c7); break;
    }
    switch (g4.distinct) {
      case 1: replay_group4_with_8<1>(blocks, bins, n, g4.f, g4.s, g4.c, f8, s8, c8); break;
      case 2: replay_group4_with_8<2>(blocks, bins, n, g4.f, g4.s, g4.c, f8, s8, c8); break;
      default: replay_group4_with_8<3>(blocks, bins, n, g4.f, g4.s, g4.c, f8, s8, c8); break;
    }
    g0.store(*this);
    g4.store(*this);
    s0[3] = static_cast<int32_t>(f3 / 2), s1[3] = static_cast<int32_t>(s3), acc[3] += c3;
    s0[7] = 0, s1[7] = static_cast<int32_t>(s3), acc[7] += c7;
    s0[8] = static_cast<int32_t>(f8 / 2), s1[8] = static_cast<int32_t>(s8), acc[8] += c8;
  }

 private:
  // Candidates first, first + 1, first + 2 (same shifts) folded into classes of equal state.
  struct Group {
    int first, distinct = 0;
    int cls[3];
    intptr_t f[3], s[3];
    uint32_t c[3];

    Group(const CandidateStates& st, int first_ecoidx) : first(first_ecoidx) {
      for (int i = 0; i < 3; ++i) {
        const int e = first + i;
        int k = 0;
        while (k < distinct && !(f[k] == 2 * st.s0[e] && s[k] == st.s1[e])) ++k;
        if (k == distinct) {
          f[k] = 2 * st.s0[e];
          s[k] = st.s1[e];
          ++distinct;
        }
        cls[i] = k;
      }
    }
    void store(CandidateStates& st) const {
      for (int i = 0; i < 3; ++i) {
        const int e = first + i, k = cls[i];
        st.s0[e] = static_cast<int32_t>(f[k] / 2);
        st.s1[e] = static_cast<int32_t>(s[k]);
        st.acc[e] += c[k];
      }
    }
  };
};

// A bin value in a per-context run. An enum rather than uint8_t so that stores into runs do not alias the
// fill counters (character types alias everything and would force reloads on the hot path).
enum class RunBin : uint8_t {};

class ParamOptimizer {
 public:
  static constexpr int kChunk = static_cast<int>(kMaxRun);  // positions per chunk: at most one bin per context each

  explicit ParamOptimizer(const Layout& L)
      : L_(L), states_(L.size), sig_(static_cast<size_t>(kSigContexts) * kChunk), sign_(3 * kChunk),
        magnitudes_{std::vector<uint32_t>(kChunk), std::vector<uint32_t>(kChunk)}, remainders_(kChunk),
        level_bins_(kChunk) {
    for (CandidateStates& c : states_) {
      c.reset_states();
      std::fill(c.acc, c.acc + kNumEco, 0);
    }
  }

  // One coded position: its stored value v, significance context 3·state + nbClass and neighbour class.
  // Branch-free (zero and nonzero values alternate unpredictably): every list is written, and a list's length
  // grows only when the value belongs to it; a position writes at most one entry per list, so the writes stay
  // within the chunk-sized lists.
  void add(int64_t v, int sig_ctx, int nbc) {
    const int nonzero = v != 0, neg = v < 0;
    const uint32_t a = static_cast<uint32_t>(neg ? -v : v);  // <= 2^31
    sig_[static_cast<size_t>(sig_ctx) * kChunk + sig_fill_[sig_ctx]++] = static_cast<RunBin>(nonzero);
    sign_[static_cast<size_t>(nbc) * kChunk + sign_fill_[nbc]] = static_cast<RunBin>(neg);
    sign_fill_[nbc] += nonzero;
    magnitudes_[neg][num_magnitudes_[neg]] = a;
    num_magnitudes_[neg] += nonzero;
    remainders_[num_remainders_] = a;
    num_remainders_ += a > static_cast<uint32_t>(L_.num_gtx);
    if (++positions_ == kChunk) process_chunk();
  }

  // Block-row boundary: candidate states restart, accumulators are kept.
  void reset_states() {
    process_chunk();
    for (CandidateStates& c : states_) c.reset_states();
  }

  // Replays the bins of the last, partial chunk; call once after the last position.
  void finish() { process_chunk(); }

  // The chosen ecoIdx of a context (after finish()).
  int best(int ctx) const {
    const uint64_t* acc = states_[ctx].acc;
    int best = 0;
    uint64_t cost = acc[0];
    for (int e = 1; e < kNumEco; ++e) {
      const uint64_t c = acc[e] + 3 * 32768;
      if (c < cost) {
        best = e;
        cost = c;
      }
    }
    return best;
  }

 private:
  static constexpr int kSigContexts = 24;

  void replay(int ctx, const RunBin* bins, int64_t n) {
    states_[ctx].replay(reinterpret_cast<const uint8_t*>(bins), n);
  }

  void process_chunk() {
    for (int c = 0; c < kSigContexts; ++c) {
      replay(c, &sig_[static_cast<size_t>(c) * kChunk], sig_fill_[c]);
      sig_fill_[c] = 0;
    }
    for (int c = 0; c < 3; ++c) {
      replay(Layout::kSign + c, &sign_[static_cast<size_t>(c) * kChunk], sign_fill_[c]);
      sign_fill_[c] = 0;
    }
    replay_magnitude_levels();
    positions_ = 0;
  }

  // Greater-than flags and remainder prefix (spec §7.1) level by level, over magnitudes a = |v| in scan order.
  // Flag j < N (context by sign) is coded for a >= j + 1 with bin a >= j + 2; remainder prefix bin t (one
  // context for both signs) for a >= N + 2^t with bin a >= N + 2^(t+1).
  void replay_magnitude_levels() {
    const int N = L_.num_gtx;
    for (int neg = 0; neg < 2; ++neg) {
      int64_t n = num_magnitudes_[neg];
      for (int j = 0; j < N && n > 0; ++j) {
        n = compact_level(magnitudes_[neg].data(), n, static_cast<uint64_t>(j) + 2);
        replay(Layout::kGtx + 2 * j + neg, level_bins_.data(), last_run_);
      }
      num_magnitudes_[neg] = 0;
    }
    int64_t n = num_remainders_;
    for (int t = 0; n > 0; ++t) {
      n = compact_level(remainders_.data(), n, static_cast<uint64_t>(N) + (uint64_t(1) << (t + 1)));
      replay(L_.rem + t, level_bins_.data(), last_run_);
    }
    num_remainders_ = 0;
  }

  // Writes the bins a >= limit of the n magnitudes to level_bins_ and keeps those magnitudes (in order);
  // returns how many were kept.
  int64_t compact_level(uint32_t* m, int64_t n, uint64_t limit) {
    RunBin* bins = level_bins_.data();
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t a = m[i];
      const int bin = a >= limit;
      bins[i] = static_cast<RunBin>(bin);
      m[kept] = a;
      kept += bin;
    }
    last_run_ = n;
    return kept;
  }

  const Layout& L_;
  std::vector<CandidateStates> states_;
  std::vector<RunBin> sig_, sign_;
  std::vector<uint32_t> magnitudes_[2];  // nonzero magnitudes of the chunk by sign (v > 0, v < 0)
  std::vector<uint32_t> remainders_;     // magnitudes above N, both signs
  std::vector<RunBin> level_bins_;
  int64_t sig_fill_[kSigContexts] = {};
  int64_t sign_fill_[3] = {};
  int64_t num_magnitudes_[2] = {};
  int64_t num_remainders_ = 0;
  int64_t last_run_ = 0;
  int positions_ = 0;
};

std::vector<int> choose_eco(const int32_t* levels, const LayerParams& p, const Geometry& g, const Layout& L,
                            const uint8_t* zero_rows, const std::vector<EcoEntry>& list) {
  ParamOptimizer opt(L);
  int64_t nb = 0;
  auto visit = [&](int64_t pos, int state) {
    const int64_t v = levels[pos];
    const int nbc = neighbour_class(nb);
    opt.add(v, 3 * state + nbc, nbc);
    nb = v;
    if (!p.dq) return state;
    return static_cast<int>(kTrans[state][dq_level_from_index(v, state) & 1]);
  };
  // Block-row boundaries reset only the candidate states (accumulators and neighbour are kept).
  walk(g, zero_rows, p.dq, visit, [&](int) { opt.reset_states(); });
  opt.finish();
  std::vector<int> out;
  out.reserve(list.size());
  for (const EcoEntry& e : list) out.push_back(e.signalled ? opt.best(e.ctx) : 0);
  return out;
}

void validate_levels(const int32_t* levels, const LayerParams& p, int64_t count) {
  if (p.codebook_size > 0) {
    const int64_t lo = -p.codebook_zero_offset, hi = p.codebook_size - 1 - p.codebook_zero_offset;
    for (int64_t i = 0; i < count; ++i)
      if (levels[i] < lo || levels[i] > hi)
        throw UsageError("codebook-coded value " + std::to_string(levels[i]) + " at position " +
                         std::to_string(i) + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) +
                         "]");
    return;
  }
  if (p.dq) return;  // with DQ the coded level is r / 2, so every int32 r is codable
  for (int64_t i = 0; i < count; ++i)
    if (levels[i] == std::numeric_limits<int32_t>::min())
      throw UsageError("level -2147483648 at position " + std::to_string(i) +
                       " cannot be coded (allowed: -2147483647 .. 2147483647)");
}

// Encoder state at the start of a block row, from which its entry point follows once the payload is complete.
struct BlockRowStart {
  int64_t bit_position;
  uint32_t low_byte, dq_state;
};

// Entry points (spec §9.4) without decoding the payload again. At a block-row start the decoder has read S =
// bit_position bits and its register is value = (16 payload bits from bit S) - 128·low (mod 2^16), where low
// is the encoder's low register at the same point (only its 9 lowest bits matter modulo 2^16); hence
// value8 = (value >> 7) & 255 = (payload bits S+1 .. S+8) - low (mod 256). Bits past the end read as 0, as in
// the decoder.
std::vector<EntryPoint> entry_points_from(const std::vector<BlockRowStart>& starts,
                                          const std::vector<uint8_t>& payload) {
  auto byte_at = [&](int64_t i) -> uint32_t { return i < static_cast<int64_t>(payload.size()) ? payload[i] : 0; };
  std::vector<EntryPoint> out;
  for (size_t j = 1; j < starts.size(); ++j) {
    const int64_t bit = starts[j].bit_position + 1;
    const uint32_t window = (byte_at(bit >> 3) << 8) | byte_at((bit >> 3) + 1);
    const uint32_t payload8 = (window >> (8 - (bit & 7))) & 0xFF;
    out.push_back({starts[j].bit_position - starts[j - 1].bit_position, (payload8 - starts[j].low_byte) & 0xFF,
                   starts[j].dq_state});
  }
  return out;
}

void encode_tensor(ArithEncoder& enc, const int32_t* levels, const LayerParams& p, const EncodeOptions& opt,
                   std::vector<BlockRowStart>& row_starts) {
  const Geometry g = make_geometry(p);
  const Layout L(p.num_gtx);
  const CodebookLimits cb{p.profile == 1 && p.codebook_size > 0, p.codebook_size, p.codebook_zero_offset};
  std::vector<Context> ctx(L.size);
  for (Context& c : ctx) c.init(0);

  std::vector<uint8_t> zero_rows;
  if (uses_row_skip_syntax(p, g)) {
    enc.encode_bypass(opt.row_skip ? 1 : 0);
    if (opt.row_skip) {
      zero_rows.assign(g.rows, 0);
      for (int64_t y = 0; y < g.rows; ++y) {
        const int32_t* row = levels + y * g.width;
        zero_rows[y] = std::all_of(row, row + g.width, [](int32_t v) { return v == 0; });
        enc.encode_bin(zero_rows[y], ctx[L.row_skip]);
      }
    }
  }
  const uint8_t* skip = zero_rows.empty() ? nullptr : zero_rows.data();

  const std::vector<EcoEntry> list = eco_list(L, p.dq, cb.active ? cb.size : 0, cb.zero);
  std::vector<int> eco(list.size(), 0);
  if (opt.param_opt && !(cb.active && cb.size == 1)) eco = choose_eco(levels, p, g, L, skip, list);
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i].signalled) {
      enc.encode_bin(eco[i] != 0, ctx[L.eco_flag]);
      if (eco[i]) enc.encode_bypass_bits(static_cast<uint32_t>(eco[i] - 1), 3);
    }
    ctx[list[i].ctx].init(eco[i]);
  }

  if (g.so && g.block_rows > 1) {
    enc.reset_range();
    row_starts.push_back({enc.bit_position(), enc.low_byte(), 0});
  }
  int64_t nb = 0;
  Context* c = ctx.data();
  const bool nothing_coded = cb.active && cb.size == 1;
  auto visit = [&](int64_t pos, int state) {
    const int64_t v = levels[pos];
    const int64_t k = p.dq ? dq_level_from_index(v, state) : v;
    if (!nothing_coded) {
      const int nbc = neighbour_class(nb);
      enc.encode_bin(k != 0, c[3 * state + nbc]);
      if (k != 0) {
        if (cb.active)
          encode_nonzero_level(enc, c, L, k, nbc, cb);
        else
          encode_plain_nonzero(enc, c, L, k, nbc);
      }
    }
    nb = k;
    return p.dq ? static_cast<int>(kTrans[state][k & 1]) : state;
  };
  auto boundary = [&](int state) {
    for (Context& x : ctx) x.reset();
    nb = 0;
    enc.reset_range();
    row_starts.push_back({enc.bit_position(), enc.low_byte(), static_cast<uint32_t>(state)});
  };
  walk(g, skip, p.dq, visit, boundary);
}

void decode_tensor(ArithDecoder& dec, const LayerParams& p, int32_t* out, std::vector<EntryPoint>* eps) {
  const Geometry g = make_geometry(p);
  const Layout L(p.num_gtx);
  const CodebookLimits cb{p.profile == 1 && p.codebook_size > 0, p.codebook_size, p.codebook_zero_offset};
  std::vector<Context> ctx(L.size);
  for (Context& c : ctx) c.init(0);

  // The walk below writes every position of the coded rows; skipped rows are zero.
  std::vector<uint8_t> zero_rows;
  if (uses_row_skip_syntax(p, g) && dec.decode_bypass()) {
    zero_rows.assign(g.rows, 0);
    for (int64_t y = 0; y < g.rows; ++y) {
      zero_rows[y] = static_cast<uint8_t>(dec.decode_bin(ctx[L.row_skip]));
      if (zero_rows[y]) std::fill(out + y * g.width, out + (y + 1) * g.width, 0);
    }
  }
  const uint8_t* skip = zero_rows.empty() ? nullptr : zero_rows.data();

  for (const EcoEntry& e : eco_list(L, p.dq, cb.active ? cb.size : 0, cb.zero)) {
    int eco = 0;
    if (e.signalled && dec.decode_bin(ctx[L.eco_flag])) eco = 1 + static_cast<int>(dec.decode_bypass_bits(3));
    ctx[e.ctx].init(eco);
  }

  if (g.so && g.block_rows > 1) dec.reset_range();
  int64_t last_bitpos = dec.bit_position();
  int64_t nb = 0;
  Context* c = ctx.data();
  const bool nothing_coded = cb.active && cb.size == 1;
  auto visit = [&](int64_t pos, int state) {
    const int nbc = neighbour_class(nb);
    int64_t k = 0;
    if (!nothing_coded && dec.decode_bin<true>(c[3 * state + nbc]))
      k = cb.active ? decode_codebook_nonzero(dec, c, L, nbc, cb) : decode_plain_nonzero(dec, c, L, nbc);
    nb = k;
    if (!p.dq) {
      out[pos] = static_cast<int32_t>(k);
      return state;
    }
    const int64_t r = dq_index_from_level(k, state);
    // NNCodec stores r as int32, so r = -2^31 (k = -2^30 at an even state) is valid with DQ
    if (r > kMaxAbsLevel || r < -kMaxAbsLevel - 1)
      throw BitstreamError("decoded reconstruction index exceeds the int32 range");
    out[pos] = static_cast<int32_t>(r);
    return static_cast<int>(kTrans[state][k & 1]);
  };
  auto boundary = [&](int state) {
    for (Context& x : ctx) x.reset();
    nb = 0;
    dec.reset_range();
    if (eps) {
      const int64_t bp = dec.bit_position();
      eps->push_back({bp - last_bitpos, dec.value8(), static_cast<uint32_t>(state)});
      last_bitpos = bp;
    }
  };
  walk(g, skip, p.dq, visit, boundary);
}

}  // namespace

// ------------------------------------------------------------------------------------------ public API
int effective_scan_order(const LayerParams& p) {
  const int64_t count = p.num_rows * p.layer_width;
  if (p.layer_width == 1 || count == p.layer_width) return 0;
  return p.scan_order;
}

EncodedPayload encode_payload(const int32_t* levels, const LayerParams& p, const EncodeOptions& opt) {
  check_params(p);
  const int64_t count = p.num_rows * p.layer_width;
  validate_levels(levels, p, count);
  if (p.has_qp) {
    const int32_t lo = -(1 << (p.qp_bits - 1)), hi = (1 << (p.qp_bits - 1)) - 1;
    if (opt.qp_delta < lo || opt.qp_delta > hi)
      throw UsageError("qp delta " + std::to_string(opt.qp_delta) + " does not fit the " +
                       std::to_string(p.qp_bits) + "-bit field (allowed " + std::to_string(lo) + " .. " +
                       std::to_string(hi) + ")");
  }
  ArithEncoder enc;
  if (p.has_qp) enc.encode_bypass_bits(static_cast<uint32_t>(opt.qp_delta) & ((1u << p.qp_bits) - 1), p.qp_bits);
  std::vector<BlockRowStart> row_starts;
  encode_tensor(enc, levels, p, opt, row_starts);
  EncodedPayload result;
  result.bytes = enc.finish();
  result.entry_points = entry_points_from(row_starts, result.bytes);
  return result;
}

DecodedPayload decode_payload(const uint8_t* data, size_t size, const LayerParams& p, int32_t* out) {
  check_params(p);
  DecodedPayload result;
  ArithDecoder dec(data, size);
  if (p.has_qp) {
    const uint32_t raw = dec.decode_bypass_bits(p.qp_bits);
    const int32_t half = 1 << (p.qp_bits - 1);
    result.qp_delta = static_cast<int32_t>(raw) >= half ? static_cast<int32_t>(raw) - 2 * half
                                                        : static_cast<int32_t>(raw);
  }
  decode_tensor(dec, p, out, &result.entry_points);
  if (dec.decode_terminating() != 1)
    throw BitstreamError("terminating bin not found at the end of the CABAC payload (corrupt NDU)");
  result.consumed = dec.consumed();
  return result;
}

void trellis_quantize(const float* weights, const LayerParams& p, double qscale, int32_t* out) {
  check_params(p);
  const Geometry g = make_geometry(p);
  const std::vector<int64_t> order = scan_positions(g.rows, g.width, g.so);
  // Incoming branches per target state: (previous state, candidate slot), order matters for ties.
  std::vector<std::pair<int, int>> branches[8];
  for (int s = 0; s < 8; ++s) {
    const int q = s & 1;
    branches[kTrans[s][0]].push_back({s, 3 * q});
    branches[kTrans[s][0]].push_back({s, 4});
    branches[kTrans[s][1]].push_back({s, 2 - q});
  }
  const size_t n = order.size();
  std::vector<uint8_t> decision(n * 8);
  double cost[8] = {0.0};
  for (int s = 1; s < 8; ++s) cost[s] = 0.5 * DBL_MAX;
  auto scaled = [&](int64_t pos, int& sg) {
    const double v = static_cast<double>(weights[pos]);
    sg = v < 0 ? -1 : 1;
    return (qscale * v) * sg;
  };
  for (size_t i = 0; i < n; ++i) {
    int sg;
    const double org = scaled(order[i], sg);
    const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(org) - 1);
    double dist[5];
    for (int64_t q = m; q < m + 4; ++q) dist[q & 3] = (org - q) * (org - q);
    dist[4] = org * org;
    double next[8];
    for (int c = 0; c < 8; ++c) {
      double best = DBL_MAX;
      uint8_t pick = 0;
      for (const auto& br : branches[c]) {
        const double v = cost[br.first] + dist[br.second];
        if (v < best) {
          best = v;
          pick = static_cast<uint8_t>(br.second | (br.first << 3));
        }
      }
      next[c] = best;
      decision[i * 8 + c] = pick;
    }
    std::copy(next, next + 8, cost);
  }
  int state = 0;
  for (int s = 1; s < 8; ++s)
    if (cost[s] < cost[state]) state = s;
  for (size_t i = n; i-- > 0;) {
    const uint8_t d = decision[i * 8 + state];
    const int slot = d & 7;
    const int prev = d >> 3;
    int64_t level = 0;
    if (slot != 4) {
      int sg;
      const double org = scaled(order[i], sg);
      const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(org) - 1);
      int64_t q = m;
      while ((q & 3) != slot) ++q;
      level = sg * ((q + 1) >> 1);
    }
    state = prev;
    int64_t r = 0;
    if (level > 0) r = 2 * level - (state & 1);
    if (level < 0) r = 2 * level + (state & 1);
    out[order[i]] = static_cast<int32_t>(r);
  }
}

std::vector<int64_t> scan_positions(int64_t num_rows, int64_t layer_width, int scan_order) {
  LayerParams p;
  p.num_rows = num_rows;
  p.layer_width = layer_width;
  p.scan_order = scan_order;
  check_params(p);
  const Geometry g = make_geometry(p);
  std::vector<int64_t> out;
  out.reserve(g.count);
  walk(g, nullptr, false, [&](int64_t pos, int s) {
    out.push_back(pos);
    return s;
  }, [](int) {});
  return out;
}

std::vector<std::pair<int, int>> trace_context(int eco, const std::vector<int>& bins) {
  if (eco < 0 || eco >= kNumEco) throw UsageError("ecoIdx must be 0..8");
  Context c;
  c.init(eco);
  std::vector<std::pair<int, int>> out;
  for (int b : bins) {
    c.update(b ? 1 : 0);
    out.push_back({c.s0, c.p});
  }
  return out;
}

namespace {
void check_script(const std::vector<int>& kinds, const std::vector<int>& args) {
  if (kinds.size() != args.size()) throw UsageError("script kinds and args differ in length");
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (kinds[i] == 0 && (args[i] < 0 || args[i] >= 64)) throw UsageError("script context index must be 0..63");
    if (kinds[i] == 1 && (args[i] < 1 || args[i] > 32)) throw UsageError("script bypass width must be 1..32");
    if (kinds[i] < 0 || kinds[i] > 2) throw UsageError("script op kind must be 0, 1 or 2");
  }
}
}  // namespace

std::vector<uint8_t> encode_bin_script(const std::vector<int>& kinds, const std::vector<int>& args,
                                       const std::vector<uint32_t>& values) {
  check_script(kinds, args);
  if (values.size() != kinds.size()) throw UsageError("script values and kinds differ in length");
  std::vector<Context> ctx(64);
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
  std::vector<Context> ctx(64);
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
