// Parameter checks, geometry and the public scan API of nnc_core.h (effective_scan_order, scan_positions).
#include "scan.h"

#include <limits>
#include <string>
#include <vector>

namespace nnc {
namespace detail {

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
  if ((p.parent_present || p.base || p.history) && p.profile != 1)
    throw UsageError("parent signalling, TCA and HDSP need general_profile_idc 1");
  if (p.base && !p.parent_present) throw UsageError("TCA (a base tensor) needs parent_present");
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

}  // namespace detail

int effective_scan_order(const LayerParams& p) {
  const int64_t count = p.num_rows * p.layer_width;
  if (p.layer_width == 1 || count == p.layer_width) return 0;
  return p.scan_order;
}

std::vector<int64_t> scan_positions(int64_t num_rows, int64_t layer_width, int scan_order) {
  LayerParams p;
  p.num_rows = num_rows;
  p.layer_width = layer_width;
  p.scan_order = scan_order;
  detail::check_params(p);
  const detail::Geometry g = detail::make_geometry(p);
  std::vector<int64_t> out;
  out.reserve(g.count);
  detail::walk(g, nullptr, false, [&](int64_t pos, int s) {
    out.push_back(pos);
    return s;
  }, [](int) {});
  return out;
}

}  // namespace nnc
