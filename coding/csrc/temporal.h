// Difference updates (spec nnc-bitstream.md §6, §13; validated against NNCodec 2.1.3, see coding/README.md):
// which contexts a level uses when the tensor is coded with temporal context adaptation (TCA: the parent
// update's co-located integer `base`) and/or history-dependent significance probability (HDSP: a mask of
// positions that were nonzero in an earlier update), and the level binarization with those contexts.
//
// Context rules (N = number of greater-than flags):
//   significance  HDSP on and mask set at the position  -> 40 + state
//                 else TCA and base != 0                -> 24 + 2·state + (|base| > 1)
//                 else                                  -> 3·state + nbClass(neighbour)
//   sign          TCA and base != 0 -> 51 + (base >= 0)     else 48 + nbClass(neighbour)
//   gt flag j     TCA and base != 0 -> 53 + 2N + 2j + (|base| >= j ? 0 : 1)   else 53 + 2j + (level < 0)
// The remainder prefix contexts are shared with plain tensors.
#pragma once

#include <cstdint>

#include "binarization.h"
#include "engine.h"

namespace nnc::detail {

inline constexpr int kTcaSig = 24;   // 2 per DQ state
inline constexpr int kHdspSig = 40;  // 1 per DQ state
inline constexpr int kTcaSign = 51;  // 2

// Per-position context choice of an update tensor.
struct UpdateContexts {
  const int32_t* base;     // nullptr: TCA off
  const int8_t* history;   // nullptr: no mask
  bool hdsp;               // hist_dep_sig_prob_enabled_flag of the tensor
  int num_gtx;

  int64_t base_at(int64_t pos) const { return base ? static_cast<int64_t>(base[pos]) : 0; }
  int sig(int64_t pos, int state, int nbc) const {
    if (hdsp && history && history[pos] == 1) return kHdspSig + state;
    const int64_t b = base_at(pos);
    if (b != 0) return kTcaSig + 2 * state + ((b > 1 || b < -1) ? 1 : 0);
    return Layout::kSig + Layout::kNeighbourClasses * state + nbc;
  }
  static int sign(int64_t b, int nbc) { return b != 0 ? kTcaSign + (b < 0 ? 0 : 1) : Layout::kSign + nbc; }
  int gtx(int64_t b, int j, int neg) const {
    if (b == 0) return Layout::kGtx + 2 * j + neg;
    const int64_t a = b < 0 ? -b : b;
    return Layout::kGtx + 2 * num_gtx + 2 * j + (a >= j ? 0 : 1);
  }
};

// Rest of a nonzero level k after its significance bin, with the contexts of base value b (0: plain contexts);
// codebook-constrained when cb.active (spec §7.2).
void encode_update_nonzero(ArithEncoder& enc, Context* ctx, const Layout& L, const UpdateContexts& uc, int64_t k,
                           int nbc, int64_t b, const CodebookLimits& cb);
int64_t decode_update_nonzero(ArithDecoder& dec, Context* ctx, const Layout& L, const UpdateContexts& uc, int nbc,
                              int64_t b, const CodebookLimits& cb);

}  // namespace nnc::detail
