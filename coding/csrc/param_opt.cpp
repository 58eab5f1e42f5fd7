// The pseudo-coding pass of spec nnc-bitstream.md §8.2: every context-coded bin of the tensor is replayed
// through nine candidate states per context (one per ecoIdx), summing bit estimates. It dominates encode time,
// so it is organised for throughput:
// * binarization is columnar: positions are gathered in chunks, then every context's bins of the chunk are
//   produced as one contiguous run (significance and sign bins by scatter, greater-than and remainder-prefix
//   bins level by level over the shrinking list of magnitudes that reach the level) and replayed at once;
// * candidates with the same shifts whose states have become equal stay equal for good: each run replays
//   only one representative per group of equal states (on Laplacian-distributed levels ecoIdx 4, 5, 6 were
//   equal for ~98 % of the bins, 0 and 1 for 55-73 %) and credits its sum to every member;
// * candidates 3 and 7 share their slow part (same shift and initial value) and candidate 7's fast part never
//   leaves 0 (shift 7 rounds every step at 0 to nothing), so candidate 7 costs one load per bin;
// * the replay keeps states in registers, finds all tables of a bin value through one block address, and
//   spends three loads and three ALU operations per candidate and bin.
#include "param_opt.h"

#include <algorithm>
#include <cstddef>

namespace nnc::detail {
namespace {

constexpr int kEstEntries = 1024, kEstCentre = 512;  // est[512 + (p >> 3)] (Appendix B)
// Fast parts are held as f = 2·s0, so that the estimate index (s1 + 16·s0) >> 3 == (s1 >> 3) + f needs no
// multiplication; the fast-part update is then indexed by f (odd entries are never read).
constexpr int kFSpan = 2 * kS0Span, kFCentre = 2 * kS0Centre;

// Tables of the candidate replay for one bin value, laid out so that one address (bin << 15) reaches all three.
struct alignas(64) ReplayBin {
  uint32_t est[kEstEntries];               // bit estimate of this bin value
  int16_t f_next[kNumShifts0][kFSpan];     // [sh0 - 4][256 + f] -> next f
  int16_t s1_next[kNumShifts1][kS1Span];   // [sh1 - 4][2048 + s1] -> next s1
};
static_assert(sizeof(ReplayBin) == 32768, "a replay block of a power-of-two size is addressed by one shift");

struct ReplayTables {
  ReplayBin bin[2];
  ReplayTables() {
    for (int b = 0; b < 2; ++b) {
      ReplayBin& t = bin[b];
      for (int i = 0; i < kEstEntries; ++i) t.est[i] = kBitEstimate[i][b];
      for (int k = 0; k < kNumShifts0; ++k) {
        std::fill(t.f_next[k], t.f_next[k] + kFSpan, int16_t{0});
        for (int v = -kS0Centre; v < kS0Span - kS0Centre; ++v)
          t.f_next[k][kFCentre + 2 * v] =
              static_cast<int16_t>(2 * kUpdate.s0_next[UpdateTables::s0_row(kMinShift + k, b) + v]);
      }
      for (int k = 0; k < kNumShifts1; ++k)
        for (int v = -kS1Centre; v < kS1Span - kS1Centre; ++v)
          t.s1_next[k][kS1Centre + v] = kUpdate.s1_next[UpdateTables::s1_row(kMinShift + k, b) + v];
    }
  }
};

const ReplayTables& replay_tables() {
  static const ReplayTables tables;
  return tables;
}

// One candidate's bit estimate and update for a bin whose tables are t (f = 2·s0, s = s1); E names an ecoIdx
// with the candidate's shifts.
template <int E>
inline void candidate_step(const ReplayBin& t, intptr_t& f, intptr_t& s, uint32_t& acc) {
  acc += t.est[kEstCentre + (s >> 3) + f];
  f = t.f_next[kEco[E].sh0 - kMinShift][kFCentre + f];
  s = t.s1_next[kEco[E].sh1 - kMinShift][kS1Centre + s];
}

constexpr bool same_shifts(int a, int b) { return kEco[a].sh0 == kEco[b].sh0 && kEco[a].sh1 == kEco[b].sh1; }
static_assert(same_shifts(0, 1) && same_shifts(0, 2) && same_shifts(4, 5) && same_shifts(4, 6),
              "groups 0-2 and 4-6 must share their shifts");
static_assert(kEco[3].sh1 == kEco[7].sh1 && kEco[3].p == 0 && kEco[3].s0 == 0 && kEco[7].p == 0 &&
                  kEco[7].s0 == 0 && (kCurve[kCurveCentre] >> kEco[7].sh0) == 0,
              "the candidate 3/7 sharing assumes equal slow parts and a fast part of 7 fixed at 0");

// Partial sums stay in 32 bits: a run holds at most kMaxRun bins of at most 2^18 each.
constexpr int64_t kMaxRun = 4096;
static_assert(kMaxRun * 262144 <= int64_t(UINT32_MAX), "replay partial sums must fit 32 bits");

// K distinct states of group 0-2, plus candidates 3 and 7.
template <int K>
void replay_group0_with_3_7(const ReplayBin* tables, const uint8_t* bins, int64_t n, intptr_t (&f)[3],
                            intptr_t (&g)[3], uint32_t (&c)[3], intptr_t& f3, intptr_t& g3, uint32_t& c3,
                            uint32_t& c7) {
  intptr_t lf[K], lg[K];
  uint32_t lc[K] = {};
  for (int k = 0; k < K; ++k) lf[k] = f[k], lg[k] = g[k];
  intptr_t a3 = f3, b3 = g3;
  uint32_t d3 = 0, d7 = 0;
  for (const uint8_t* it = bins; it != bins + n; ++it) {
    const ReplayBin& t = tables[*it];
    d7 += t.est[kEstCentre + (b3 >> 3)];
    candidate_step<3>(t, a3, b3, d3);
    for (int k = 0; k < K; ++k) candidate_step<0>(t, lf[k], lg[k], lc[k]);
  }
  for (int k = 0; k < K; ++k) f[k] = lf[k], g[k] = lg[k], c[k] = lc[k];
  f3 = a3, g3 = b3, c3 = d3, c7 = d7;
}

// M distinct states of group 4-6, plus candidate 8.
template <int M>
void replay_group4_with_8(const ReplayBin* tables, const uint8_t* bins, int64_t n, intptr_t (&f)[3],
                          intptr_t (&g)[3], uint32_t (&c)[3], intptr_t& f8, intptr_t& g8, uint32_t& c8) {
  intptr_t lf[M], lg[M];
  uint32_t lc[M] = {};
  for (int k = 0; k < M; ++k) lf[k] = f[k], lg[k] = g[k];
  intptr_t a8 = f8, b8 = g8;
  uint32_t d8 = 0;
  for (const uint8_t* it = bins; it != bins + n; ++it) {
    const ReplayBin& t = tables[*it];
    candidate_step<8>(t, a8, b8, d8);
    for (int k = 0; k < M; ++k) candidate_step<4>(t, lf[k], lg[k], lc[k]);
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
    const ReplayBin* tables = replay_tables().bin;
    Group g0(*this, 0), g4(*this, 4);
    intptr_t f3 = 2 * s0[3], s3 = s1[3], f8 = 2 * s0[8], s8 = s1[8];
    uint32_t c3, c7, c8;
    switch (g0.distinct) {
      case 1: replay_group0_with_3_7<1>(tables, bins, n, g0.f, g0.s, g0.c, f3, s3, c3, c7); break;
      case 2: replay_group0_with_3_7<2>(tables, bins, n, g0.f, g0.s, g0.c, f3, s3, c3, c7); break;
      default: replay_group0_with_3_7<3>(tables, bins, n, g0.f, g0.s, g0.c, f3, s3, c3, c7); break;
    }
    switch (g4.distinct) {
      case 1: replay_group4_with_8<1>(tables, bins, n, g4.f, g4.s, g4.c, f8, s8, c8); break;
      case 2: replay_group4_with_8<2>(tables, bins, n, g4.f, g4.s, g4.c, f8, s8, c8); break;
      default: replay_group4_with_8<3>(tables, bins, n, g4.f, g4.s, g4.c, f8, s8, c8); break;
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
      : L_(L), states_(L.size), sig_(static_cast<size_t>(kSigContexts) * kChunk),
        sign_(static_cast<size_t>(kSignContexts) * kChunk),
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
      const uint64_t c = acc[e] + kEcoSignalCost;
      if (c < cost) {
        best = e;
        cost = c;
      }
    }
    return best;
  }

 private:
  static constexpr int kSigContexts = Layout::kSigContexts;
  static constexpr int kSignContexts = Layout::kNeighbourClasses;
  static constexpr uint64_t kEcoSignalCost = 3 * 32768;  // three bypass bits, 1 bit = 32768

  void replay(int ctx, const RunBin* bins, int64_t n) {
    states_[ctx].replay(reinterpret_cast<const uint8_t*>(bins), n);
  }

  void process_chunk() {
    for (int c = 0; c < kSigContexts; ++c) {
      replay(Layout::kSig + c, &sig_[static_cast<size_t>(c) * kChunk], sig_fill_[c]);
      sig_fill_[c] = 0;
    }
    for (int c = 0; c < kSignContexts; ++c) {
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
  int64_t sign_fill_[kSignContexts] = {};
  int64_t num_magnitudes_[2] = {};
  int64_t num_remainders_ = 0;
  int64_t last_run_ = 0;
  int positions_ = 0;
};

}  // namespace

std::vector<int> choose_eco(const int32_t* levels, const LayerParams& p, const Geometry& g, const Layout& L,
                            const uint8_t* zero_rows, const std::vector<EcoEntry>& list) {
  ParamOptimizer opt(L);
  int64_t nb = 0;
  auto visit = [&](int64_t pos, int state) {
    const int64_t v = levels[pos];
    const int nbc = neighbour_class(nb);
    opt.add(v, Layout::kNeighbourClasses * state + nbc, nbc);
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

std::vector<int> choose_eco_update(const int32_t* levels, const LayerParams& p, const Geometry& g, const Layout& L,
                                   const uint8_t* zero_rows, const std::vector<EcoEntry>& list,
                                   const UpdateContexts& uc) {
  // Bins are collected per context and replayed in runs: contexts are independent, so only the order of each
  // context's own bins matters.
  std::vector<CandidateStates> states(L.size);
  for (CandidateStates& c : states) {
    c.reset_states();
    std::fill(c.acc, c.acc + kNumEco, 0);
  }
  std::vector<std::vector<uint8_t>> runs(L.size);
  auto flush = [&](int ctx) {
    std::vector<uint8_t>& r = runs[ctx];
    states[ctx].replay(r.data(), static_cast<int64_t>(r.size()));
    r.clear();
  };
  auto bin = [&](int ctx, int b) {
    std::vector<uint8_t>& r = runs[ctx];
    r.push_back(static_cast<uint8_t>(b));
    if (static_cast<int64_t>(r.size()) == kMaxRun) flush(ctx);
  };
  const int N = L.num_gtx;
  int64_t nb = 0;
  auto visit = [&](int64_t pos, int state) {
    const int64_t v = levels[pos];
    const int nbc = neighbour_class(nb);
    const int64_t b = uc.base_at(pos);
    bin(uc.sig(pos, state, nbc), v != 0);
    if (v != 0) {
      const int neg = v < 0;
      bin(UpdateContexts::sign(b, nbc), neg);
      const int64_t a = neg ? -v : v;
      int j = 0;
      for (; j < N; ++j) {
        const int flag = a > j + 1;
        bin(uc.gtx(b, j, neg), flag);
        if (!flag) break;
      }
      if (j == N) {
        const int64_t rem = a - N - 1;
        int64_t base = 0;
        for (int t = 0; t < kMaxRemainderPrefix; ++t) {
          const int more = rem >= base + (int64_t(1) << t);
          bin(L.rem + t, more);
          if (!more) break;
          base += int64_t(1) << t;
        }
      }
    }
    nb = v;
    if (!p.dq) return state;
    return static_cast<int>(kTrans[state][dq_level_from_index(v, state) & 1]);
  };
  auto flush_all = [&] {
    for (int c = 0; c < L.size; ++c)
      if (!runs[c].empty()) flush(c);
  };
  walk(g, zero_rows, p.dq, visit, [&](int) {
    flush_all();
    for (CandidateStates& c : states) c.reset_states();
  });
  flush_all();
  std::vector<int> out;
  out.reserve(list.size());
  for (const EcoEntry& e : list) {
    if (!e.signalled) {
      out.push_back(0);
      continue;
    }
    const uint64_t* acc = states[e.ctx].acc;
    int best = 0;
    uint64_t cost = acc[0];
    for (int k = 1; k < kNumEco; ++k) {
      const uint64_t c = acc[k] + 3 * 32768;
      if (c < cost) {
        best = k;
        cost = c;
      }
    }
    out.push_back(best);
  }
  return out;
}

}  // namespace nnc::detail
