// Context layout and binarization of one level (spec nnc-bitstream.md §6, §7, §8.1): significance, sign,
// greater-than flags and the Exp-Golomb remainder with a context-coded prefix, plain and codebook-constrained.
// The plain variants are defined here so that they inline into the coding loops; binarization.cpp holds the
// rest.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "engine.h"

namespace nnc::detail {

inline constexpr int64_t kMaxAbsLevel = 2147483647;
inline constexpr int kMaxRemainderPrefix = 31;
inline constexpr int64_t kNoBound = std::numeric_limits<int64_t>::max();

// Per-tensor context array (spec §6): N = number of greater-than flags.
struct Layout {
  static constexpr int kNeighbourClasses = 3;                 // nb == 0, nb < 0, nb > 0
  static constexpr int kDqStates = 8;
  static constexpr int kSig = 0;                              // 3·state + nbClass
  static constexpr int kSigContexts = kDqStates * kNeighbourClasses;
  static constexpr int kSign = 48;                            // after the TCA and HDSP significance contexts
  static constexpr int kGtx = 53;                             // after the TCA sign contexts; 2 per flag
  static constexpr int kGtxGroups = 2;                        // plain and TCA greater-than contexts
  static constexpr int kRemainderContexts = 32;               // 31 used (spec §6)
  static constexpr int kEcoFlagOffset = 34;                   // from the first remainder context
  static constexpr int kRowSkipOffset = 36;
  static constexpr int kMiscContexts = 5;                     // after the remainder contexts

  int num_gtx, rem, eco_flag, row_skip, size;
  explicit Layout(int n)
      : num_gtx(n),
        rem(kGtx + 2 * kGtxGroups * n),
        eco_flag(rem + kEcoFlagOffset),
        row_skip(rem + kRowSkipOffset),
        size(rem + kRemainderContexts + kMiscContexts) {}
};

inline int neighbour_class(int64_t nb) { return nb == 0 ? 0 : (nb < 0 ? 1 : 2); }

struct CodebookLimits {
  bool active;  // profile-1 codebook-constrained binarization (spec §7.2)
  int size, zero;
};

// A context whose parameter set is (or is not) signalled, in bitstream order (spec §8.1).
struct EcoEntry {
  int ctx;
  bool signalled;
};

// The ecoIdx list of a tensor: significance, [TCA significance], [HDSP significance], sign (+ TCA sign),
// greater-than, [TCA greater-than], remainder prefix (spec §8.1).
std::vector<EcoEntry> eco_list(const Layout& L, bool dq, int cb_size, int cb_zero, bool tca = false,
                               bool hdsp = false);

// Exp-Golomb remainder rem >= 0 after all greater-than flags were 1, with context-coded prefix (spec §7.1); a
// codebook bound (the largest remainder the codebook allows, spec §7.2) ends the prefix early.
__attribute__((noinline)) void encode_remainder(ArithEncoder& enc, Context* ctx, const Layout& L, int64_t rem,
                                                int64_t bound);

// The remainder encode_remainder wrote, with the same bound.
int64_t decode_remainder(ArithDecoder& dec, Context* ctx, const Layout& L, int64_t bound);

// Rest of a non-zero level after its significance bin, codebook-constrained variant (spec §7.2).
void encode_nonzero_level(ArithEncoder& enc, Context* ctx, const Layout& L, int64_t k, int nbc,
                          const CodebookLimits& cb);

// Rest of a level after a significance bin of 1, codebook-constrained variant (spec §7.2).
int64_t decode_codebook_nonzero(ArithDecoder& dec, Context* ctx, const Layout& L, int nbc,
                                const CodebookLimits& cb);

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

}  // namespace nnc::detail
