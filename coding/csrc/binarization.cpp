// Binarization parts outside the hot loop: the ecoIdx list, the remainder and the codebook-constrained levels.
#include "binarization.h"

#include <algorithm>

namespace nnc::detail {

std::vector<EcoEntry> eco_list(const Layout& L, bool dq, int cb_size, int cb_zero, bool tca, bool hdsp) {
  std::vector<EcoEntry> out;
  const bool any = cb_size != 1;
  const int sig_contexts = dq ? Layout::kSigContexts : Layout::kNeighbourClasses;
  for (int i = 0; i < sig_contexts; ++i) out.push_back({Layout::kSig + i, any});
  // TCA significance: 2 per DQ state from 24; HDSP significance: 1 per DQ state from 40 (state 0 only without DQ)
  if (tca)
    for (int i = 0; i < (dq ? 2 * Layout::kDqStates : 2); ++i) out.push_back({24 + i, any});
  if (hdsp)
    for (int i = 0; i < (dq ? Layout::kDqStates : 1); ++i) out.push_back({40 + i, any});
  const bool sign = any && !(cb_size > 0 && (cb_zero == 0 || cb_zero == cb_size - 1));
  for (int i = 0; i < Layout::kNeighbourClasses + (tca ? 2 : 0); ++i) out.push_back({Layout::kSign + i, sign});
  const int64_t max_abs = cb_size > 0 ? std::max(cb_zero, cb_size - 1 - cb_zero) : -1;
  for (int a = 0; a < 2 * L.num_gtx; ++a) out.push_back({Layout::kGtx + a, max_abs == -1 || a < 2 * max_abs});
  if (tca)
    for (int a = 2 * L.num_gtx; a < 4 * L.num_gtx; ++a)
      out.push_back({Layout::kGtx + a, max_abs == -1 || a < 2 * (max_abs - 1) + 2 * L.num_gtx});
  int64_t level = L.num_gtx - 1;
  for (int a = 0; a < kMaxRemainderPrefix; ++a) {
    level += int64_t(1) << a;
    out.push_back({L.rem + a, max_abs == -1 || level < max_abs});
  }
  return out;
}

void encode_remainder(ArithEncoder& enc, Context* ctx, const Layout& L, int64_t rem, int64_t bound) {
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

int64_t decode_remainder(ArithDecoder& dec, Context* ctx, const Layout& L, int64_t bound) {
  int64_t base = 0;
  int t = 0;
  while (t < kMaxRemainderPrefix) {
    if (!dec.decode_bin(ctx[L.rem + t])) break;
    base += int64_t(1) << t;
    ++t;
    if (base + (int64_t(1) << t) > bound) break;
  }
  return base + dec.decode_bypass_bits(t);
}

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
    if (flag && a < max_abs) a += decode_remainder(dec, ctx, L, max_abs - a);
  }
  if (a > max_abs) throw BitstreamError("decoded codebook index outside the codebook");
  return neg ? -a : a;
}

}  // namespace nnc::detail
