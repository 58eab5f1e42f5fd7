// Tensor geometry, parameter checks and the coding order of positions (spec nnc-bitstream.md §3.3, §9, §10):
// row-major or block scans, block-row boundaries, and skipped rows with their DQ state advance.
#pragma once

#include <algorithm>
#include <cstdint>

#include "dependent_quant.h"
#include "nnc_core.h"

namespace nnc::detail {

struct Geometry {
  int64_t rows, width, count;
  int so;              // effective scan order
  int64_t block;       // 4 << so (0 for scan 0)
  int64_t block_rows;  // number of block rows (1 for scan 0)
};

// Throws UsageError naming the first invalid field of p.
void check_params(const LayerParams& p);

Geometry make_geometry(const LayerParams& p);

// Walks the coded positions in scan order (spec Appendix C/D): skipped row segments advance the DQ state,
// visit(pos, state) -> next state for every coded position, boundary(state) after each block row but the last.
template <class Visit, class Boundary>
void walk(const Geometry& g, const uint8_t* zero_rows, bool dq, Visit&& visit, Boundary&& boundary) {
  uint8_t advance[kNumDqStates];
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

}  // namespace nnc::detail
