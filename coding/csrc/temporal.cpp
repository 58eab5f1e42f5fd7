// Level binarization of difference-update tensors with TCA contexts (see temporal.h).
#include "temporal.h"

namespace nnc::detail {

void encode_update_nonzero(ArithEncoder& enc, Context* ctx, const Layout& L, const UpdateContexts& uc, int64_t k,
                           int nbc, int64_t b, const CodebookLimits& cb) {
  const int neg = k < 0;
  if (!(cb.active && (cb.zero == 0 || cb.zero == cb.size - 1))) enc.encode_bin(neg, ctx[UpdateContexts::sign(b, nbc)]);
  const int64_t a = neg ? -k : k;
  const int64_t max_abs = cb.active ? (neg ? cb.zero : cb.size - 1 - cb.zero) : kMaxAbsLevel + 1;
  if (max_abs <= 1) return;
  int64_t known = 1;
  int flag = 0;
  for (int j = 0; j < L.num_gtx; ++j) {
    flag = a > j + 1;
    enc.encode_bin(flag, ctx[uc.gtx(b, j, neg)]);
    known += flag;
    if (!flag || known >= max_abs) break;
  }
  if (!flag || known >= max_abs) return;
  encode_remainder(enc, ctx, L, a - known, cb.active ? max_abs - known : kNoBound);
}

int64_t decode_update_nonzero(ArithDecoder& dec, Context* ctx, const Layout& L, const UpdateContexts& uc, int nbc,
                              int64_t b, const CodebookLimits& cb) {
  int neg;
  if (cb.active && (cb.zero == 0 || cb.zero == cb.size - 1))
    neg = cb.zero != 0;
  else
    neg = dec.decode_bin(ctx[UpdateContexts::sign(b, nbc)]);
  const int64_t max_abs = cb.active ? (neg ? cb.zero : cb.size - 1 - cb.zero) : kMaxAbsLevel + 1;
  int64_t a = 1;
  if (max_abs > 1) {
    int flag = 0;
    for (int j = 0; j < L.num_gtx; ++j) {
      flag = dec.decode_bin(ctx[uc.gtx(b, j, neg)]);
      a += flag;
      if (!flag || a >= max_abs) break;
    }
    if (flag && a < max_abs) a += decode_remainder(dec, ctx, L, cb.active ? max_abs - a : kNoBound);
  }
  if (a > (cb.active ? max_abs : kMaxAbsLevel))
    throw BitstreamError(cb.active ? "decoded codebook index outside the codebook"
                                   : "decoded level magnitude exceeds the int32 range");
  return neg ? -a : a;
}

}  // namespace nnc::detail
