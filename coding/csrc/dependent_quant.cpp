// NNCodec's 8-state trellis quantizer with lambda = 0 (spec nnc-bitstream.md §11.6), with its inputs checked:
// the candidate levels are formed from trunc(qscale·|w|) in int64, so NaN, infinite and too large products
// are rejected before any conversion.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "dependent_quant.h"
#include "scan.h"

namespace nnc {
namespace {

using detail::kNumDqStates;
using detail::kTrans;

// Largest accepted qscale·|w|: candidate levels stay far inside int64 and their reconstruction indices
// (at most trunc(qscale·|w|) + 3 in magnitude) are checked against int32 when they are formed.
constexpr double kMaxScaledMagnitude = 2147483648.0;  // 2^31
constexpr int kZeroSlot = 4;                            // candidate slot of level 0 (slots 0..3: q mod 4)
constexpr int kNumSlots = 5;

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void check_trellis_input(const float* weights, int64_t count, double qscale) {
  if (!std::isfinite(qscale) || !(qscale > 0))
    throw UsageError("trellis_quantize: qscale (1 / step size) must be a finite positive number, got " +
                     number(qscale));
  for (int64_t i = 0; i < count; ++i) {
    const double w = static_cast<double>(weights[i]);
    if (std::isnan(w))
      throw UsageError("trellis_quantize: weight at position " + std::to_string(i) + " is NaN");
    if (std::isinf(w))
      throw UsageError("trellis_quantize: weight at position " + std::to_string(i) + " is infinite");
    const double scaled = qscale * std::fabs(w);
    if (!(scaled <= kMaxScaledMagnitude))
      throw UsageError("trellis_quantize: weight " + number(w) + " at position " + std::to_string(i) +
                       " times qscale " + number(qscale) + " is " + number(scaled) +
                       ", which exceeds the int32 level range (|qscale * w| <= 2^31); use a larger step (qp)");
  }
}

}  // namespace

void trellis_quantize(const float* weights, const LayerParams& p, double qscale, int32_t* out) {
  detail::check_params(p);
  const detail::Geometry g = detail::make_geometry(p);
  check_trellis_input(weights, g.count, qscale);
  const std::vector<int64_t> order = scan_positions(g.rows, g.width, g.so);
  // Incoming branches per target state: (previous state, candidate slot), order matters for ties.
  std::vector<std::pair<int, int>> branches[kNumDqStates];
  for (int s = 0; s < kNumDqStates; ++s) {
    const int q = s & 1;
    branches[kTrans[s][0]].push_back({s, 3 * q});
    branches[kTrans[s][0]].push_back({s, kZeroSlot});
    branches[kTrans[s][1]].push_back({s, 2 - q});
  }
  const size_t n = order.size();
  std::vector<uint8_t> decision(n * kNumDqStates);
  double cost[kNumDqStates] = {0.0};
  for (int s = 1; s < kNumDqStates; ++s) cost[s] = 0.5 * DBL_MAX;
  auto scaled = [&](int64_t pos, int& sg) {
    const double v = static_cast<double>(weights[pos]);
    sg = v < 0 ? -1 : 1;
    return (qscale * v) * sg;
  };
  for (size_t i = 0; i < n; ++i) {
    int sg;
    const double org = scaled(order[i], sg);
    const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(org) - 1);
    double dist[kNumSlots];
    for (int64_t q = m; q < m + 4; ++q) dist[q & 3] = (org - q) * (org - q);
    dist[kZeroSlot] = org * org;
    double next[kNumDqStates];
    for (int c = 0; c < kNumDqStates; ++c) {
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
      decision[i * kNumDqStates + c] = pick;
    }
    std::copy(next, next + kNumDqStates, cost);
  }
  int state = 0;
  for (int s = 1; s < kNumDqStates; ++s)
    if (cost[s] < cost[state]) state = s;
  for (size_t i = n; i-- > 0;) {
    const uint8_t d = decision[i * kNumDqStates + state];
    const int slot = d & 7;
    const int prev = d >> 3;
    int64_t level = 0;
    if (slot != kZeroSlot) {
      int sg;
      const double org = scaled(order[i], sg);
      const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(org) - 1);
      int64_t q = m;
      while ((q & 3) != slot) ++q;
      level = sg * ((q + 1) >> 1);
    }
    state = prev;
    const int64_t r = detail::dq_index_from_level(level, state);
    if (r < std::numeric_limits<int32_t>::min() || r > std::numeric_limits<int32_t>::max())
      throw UsageError("trellis_quantize: reconstruction index " + std::to_string(r) + " at position " +
                       std::to_string(order[i]) + " exceeds the int32 range; use a larger step (qp)");
    out[order[i]] = static_cast<int32_t>(r);
  }
}

}  // namespace nnc
