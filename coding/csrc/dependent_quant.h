// Dependent quantization (spec nnc-bitstream.md §11): the 8-state machine, the mapping between coded levels k
// and reconstruction indices r, and NNCodec's trellis quantizer (trellis_quantize in nnc_core.h, defined in
// dependent_quant.cpp).
#pragma once

#include <cstdint>

namespace nnc::detail {

inline constexpr int kNumDqStates = 8;

// State transitions T[state][parity of k] (spec §11.1).
inline constexpr uint8_t kTrans[kNumDqStates][2] = {{0, 2}, {7, 5}, {1, 3}, {6, 4}, {2, 0}, {5, 7}, {3, 1}, {4, 6}};

// Coded level k of reconstruction index r at `state` (spec §11.2, encoder side).
inline int64_t dq_level_from_index(int64_t r, int state) {
  if (r == 0) return 0;
  const int64_t q = state & 1;
  return r > 0 ? (r + q) >> 1 : (r - q) >> 1;
}

// Reconstruction index r of coded level k at `state` (spec §11.2, decoder side).
inline int64_t dq_index_from_level(int64_t k, int state) {
  if (k == 0) return 0;
  const int64_t q = state & 1;
  return k > 0 ? 2 * k - q : 2 * k + q;
}

// State reached from each state after `width` parity-0 transitions (a skipped row, spec §10). The parity-0
// graph has cycles of length 1, 2 and 4, so width mod 4 steps suffice.
inline void skip_advance_table(int64_t width, uint8_t table[kNumDqStates]) {
  for (int s = 0; s < kNumDqStates; ++s) {
    int t = s;
    for (int64_t i = 0; i < width % 4; ++i) t = kTrans[t][0];
    table[s] = static_cast<uint8_t>(t);
  }
}

}  // namespace nnc::detail
