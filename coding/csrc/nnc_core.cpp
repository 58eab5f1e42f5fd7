// Coding of one tensor inside an NDU codeword (spec nnc-bitstream.md §3, Appendices C and D): row-skip syntax,
// ecoIdx signalling, the level loop over the scan with DQ, block-row resets and entry points; and the payload
// API of nnc_core.h. The engine, binarization, ecoIdx choice, scans and the trellis live in their own units.
#include "nnc_core.h"

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "binarization.h"
#include "dependent_quant.h"
#include "engine.h"
#include "param_opt.h"
#include "scan.h"
#include "temporal.h"

namespace nnc {
namespace {

using namespace detail;

bool uses_row_skip_syntax(const LayerParams& p, const Geometry& g) {
  return p.profile == 1 && g.width > 1 && g.count > g.width && p.codebook_size != 1;
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
  const bool row_syntax = uses_row_skip_syntax(p, g);
  const bool hdsp = row_syntax && p.parent_present && opt.hdsp;
  if (row_syntax) {
    if (p.parent_present) enc.encode_bypass(hdsp ? 1 : 0);  // hist_dep_sig_prob_enabled_flag
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

  const bool update = p.base != nullptr || hdsp;
  const UpdateContexts uc{p.base, p.history, hdsp, p.num_gtx};
  const std::vector<EcoEntry> list = eco_list(L, p.dq, cb.active ? cb.size : 0, cb.zero, p.base != nullptr, hdsp);
  std::vector<int> eco(list.size(), 0);
  if (opt.param_opt && !(cb.active && cb.size == 1))
    eco = update ? choose_eco_update(levels, p, g, L, skip, list, uc) : choose_eco(levels, p, g, L, skip, list);
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
      enc.encode_bin(k != 0, c[Layout::kSig + Layout::kNeighbourClasses * state + nbc]);
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
  auto visit_update = [&](int64_t pos, int state) {
    const int64_t v = levels[pos];
    const int64_t k = p.dq ? dq_level_from_index(v, state) : v;
    if (!nothing_coded) {
      const int nbc = neighbour_class(nb);
      enc.encode_bin(k != 0, c[uc.sig(pos, state, nbc)]);
      if (k != 0) encode_update_nonzero(enc, c, L, uc, k, nbc, uc.base_at(pos), cb);
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
  if (update)
    walk(g, skip, p.dq, visit_update, boundary);
  else
    walk(g, skip, p.dq, visit, boundary);
}

void decode_tensor(ArithDecoder& dec, const LayerParams& p, int32_t* out, std::vector<EntryPoint>* eps,
                   bool* hdsp_flag) {
  const Geometry g = make_geometry(p);
  const Layout L(p.num_gtx);
  const CodebookLimits cb{p.profile == 1 && p.codebook_size > 0, p.codebook_size, p.codebook_zero_offset};
  std::vector<Context> ctx(L.size);
  for (Context& c : ctx) c.init(0);

  // The walk below writes every position of the coded rows; skipped rows are zero.
  std::vector<uint8_t> zero_rows;
  const bool row_syntax = uses_row_skip_syntax(p, g);
  const bool hdsp = row_syntax && p.parent_present && dec.decode_bypass();  // hist_dep_sig_prob_enabled_flag
  *hdsp_flag = hdsp;
  if (row_syntax && dec.decode_bypass()) {
    zero_rows.assign(g.rows, 0);
    for (int64_t y = 0; y < g.rows; ++y) {
      zero_rows[y] = static_cast<uint8_t>(dec.decode_bin(ctx[L.row_skip]));
      if (zero_rows[y]) std::fill(out + y * g.width, out + (y + 1) * g.width, 0);
    }
  }
  const uint8_t* skip = zero_rows.empty() ? nullptr : zero_rows.data();

  const bool update = p.base != nullptr || hdsp;
  const UpdateContexts uc{p.base, p.history, hdsp, p.num_gtx};
  for (const EcoEntry& e : eco_list(L, p.dq, cb.active ? cb.size : 0, cb.zero, p.base != nullptr, hdsp)) {
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
    if (update) {
      if (!nothing_coded && dec.decode_bin(c[uc.sig(pos, state, nbc)]))
        k = decode_update_nonzero(dec, c, L, uc, nbc, uc.base_at(pos), cb);
    } else if (!nothing_coded && dec.decode_bin<true>(c[Layout::kSig + Layout::kNeighbourClasses * state + nbc])) {
      k = cb.active ? decode_codebook_nonzero(dec, c, L, nbc, cb) : decode_plain_nonzero(dec, c, L, nbc);
    }
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

namespace {

// Checks one tensor's parameters and levels, then codes [qp delta] + the tensor into enc.
void encode_one(ArithEncoder& enc, const int32_t* levels, const LayerParams& p, const EncodeOptions& opt,
                std::vector<BlockRowStart>& row_starts) {
  if (p.has_qp) enc.encode_bypass_bits(static_cast<uint32_t>(opt.qp_delta) & ((1u << p.qp_bits) - 1), p.qp_bits);
  encode_tensor(enc, levels, p, opt, row_starts);
}

void check_encode_input(const int32_t* levels, const LayerParams& p, const EncodeOptions& opt) {
  check_params(p);
  validate_levels(levels, p, p.num_rows * p.layer_width);
  if (p.has_qp) {
    const int32_t lo = -(1 << (p.qp_bits - 1)), hi = (1 << (p.qp_bits - 1)) - 1;
    if (opt.qp_delta < lo || opt.qp_delta > hi)
      throw UsageError("qp delta " + std::to_string(opt.qp_delta) + " does not fit the " +
                       std::to_string(p.qp_bits) + "-bit field (allowed " + std::to_string(lo) + " .. " +
                       std::to_string(hi) + ")");
  }
}

int32_t decode_qp_delta(ArithDecoder& dec, const LayerParams& p) {
  if (!p.has_qp) return 0;
  const uint32_t raw = dec.decode_bypass_bits(p.qp_bits);
  const int32_t half = 1 << (p.qp_bits - 1);
  return static_cast<int32_t>(raw) >= half ? static_cast<int32_t>(raw) - 2 * half : static_cast<int32_t>(raw);
}

}  // namespace

EncodedPayload encode_payload(const int32_t* levels, const LayerParams& p, const EncodeOptions& opt) {
  check_encode_input(levels, p, opt);
  ArithEncoder enc;
  std::vector<BlockRowStart> row_starts;
  encode_one(enc, levels, p, opt, row_starts);
  EncodedPayload result;
  result.bytes = enc.finish();
  result.entry_points = entry_points_from(row_starts, result.bytes);
  return result;
}

DecodedPayload decode_payload(const uint8_t* data, size_t size, const LayerParams& p, int32_t* out) {
  check_params(p);
  DecodedPayload result;
  ArithDecoder dec(data, size);
  result.qp_delta = decode_qp_delta(dec, p);
  decode_tensor(dec, p, out, &result.entry_points, &result.hdsp);
  if (dec.decode_terminating() != 1)
    throw BitstreamError("terminating bin not found at the end of the CABAC payload (corrupt NDU)");
  result.consumed = dec.consumed();
  return result;
}

EncodedPayload encode_block_payload(const std::vector<BlockTensor>& tensors) {
  if (tensors.empty()) throw UsageError("a block payload needs at least one tensor");
  for (const BlockTensor& t : tensors) check_encode_input(t.levels, t.params, t.options);
  ArithEncoder enc;
  // each tensor's block rows are measured separately; the entry point lists are concatenated (spec §2.10)
  std::vector<std::vector<BlockRowStart>> starts(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i)
    encode_one(enc, tensors[i].levels, tensors[i].params, tensors[i].options, starts[i]);
  EncodedPayload result;
  result.bytes = enc.finish();
  for (const auto& s : starts) {
    const std::vector<EntryPoint> eps = entry_points_from(s, result.bytes);
    result.entry_points.insert(result.entry_points.end(), eps.begin(), eps.end());
  }
  return result;
}

DecodedBlock decode_block_payload(const uint8_t* data, size_t size, const std::vector<LayerParams>& params,
                                  const std::vector<int32_t*>& outs) {
  if (params.empty() || params.size() != outs.size())
    throw UsageError("a block payload needs one output per tensor and at least one tensor");
  for (const LayerParams& p : params) check_params(p);
  DecodedBlock result;
  ArithDecoder dec(data, size);
  for (size_t i = 0; i < params.size(); ++i) {
    result.qp_deltas.push_back(decode_qp_delta(dec, params[i]));
    bool hdsp = false;
    decode_tensor(dec, params[i], outs[i], &result.entry_points, &hdsp);
    result.hdsp.push_back(hdsp);
  }
  if (dec.decode_terminating() != 1)
    throw BitstreamError("terminating bin not found at the end of the CABAC payload (corrupt NDU)");
  result.consumed = dec.consumed();
  return result;
}

}  // namespace nnc
