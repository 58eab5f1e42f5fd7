// Python binding of the DeepCABAC core: int32 CPU tensors in (zero-copy), bytes out, GIL released while coding.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "nnc_core.h"

namespace py = pybind11;

namespace {

void require_tensor(const torch::Tensor& t, torch::ScalarType dtype, int64_t count, const char* what) {
  if (t.scalar_type() != dtype)
    throw nnc::UsageError(std::string(what) + " must have dtype " + c10::toString(dtype) + ", got " +
                          c10::toString(t.scalar_type()));
  if (!t.device().is_cpu()) throw nnc::UsageError(std::string(what) + " must be a CPU tensor");
  if (!t.is_contiguous()) throw nnc::UsageError(std::string(what) + " must be contiguous");
  if (t.numel() != count)
    throw nnc::UsageError(std::string(what) + " has " + std::to_string(t.numel()) + " elements, expected " +
                          std::to_string(count));
}

nnc::LayerParams make_params(int64_t rows, int64_t width, int scan_order, bool dq, int num_gtx, int profile,
                             int cb_size, int cb_zero, bool has_qp, int qp_bits) {
  nnc::LayerParams p;
  p.num_rows = rows;
  p.layer_width = width;
  p.scan_order = scan_order;
  p.dq = dq;
  p.num_gtx = num_gtx;
  p.profile = profile;
  p.codebook_size = cb_size;
  p.codebook_zero_offset = cb_zero;
  p.has_qp = has_qp;
  p.qp_bits = qp_bits;
  return p;
}

int64_t checked_count(int64_t rows, int64_t width) {
  if (rows < 1 || width < 1 || rows > (int64_t(1) << 40) / width)
    throw nnc::UsageError("invalid tensor geometry rows=" + std::to_string(rows) + " width=" + std::to_string(width));
  return rows * width;
}

py::list entry_point_list(const std::vector<nnc::EntryPoint>& eps) {
  py::list out;
  for (const auto& e : eps) out.append(py::make_tuple(e.bit_delta, e.value8, e.dq_state));
  return out;
}

// Codes one payload with the GIL released; (payload bytes, entry points).
py::tuple encode_without_gil(const int32_t* data, const nnc::LayerParams& p, const nnc::EncodeOptions& opt) {
  nnc::EncodedPayload result;
  {
    py::gil_scoped_release release;
    result = nnc::encode_payload(data, p, opt);
  }
  py::bytes payload(reinterpret_cast<const char*>(result.bytes.data()), result.bytes.size());
  return py::make_tuple(payload, entry_point_list(result.entry_points));
}

py::tuple encode_payload(const torch::Tensor& levels, int64_t rows, int64_t width, int scan_order, bool dq,
                         int num_gtx, int profile, int cb_size, int cb_zero, bool has_qp, int qp_bits,
                         bool row_skip, bool param_opt, int32_t qp_delta) {
  const int64_t count = checked_count(rows, width);
  require_tensor(levels, torch::kInt32, count, "levels");
  const nnc::LayerParams p = make_params(rows, width, scan_order, dq, num_gtx, profile, cb_size, cb_zero, has_qp,
                                         qp_bits);
  nnc::EncodeOptions opt;
  opt.row_skip = row_skip;
  opt.param_opt = param_opt;
  opt.qp_delta = qp_delta;
  return encode_without_gil(levels.data_ptr<int32_t>(), p, opt);
}

// The buffer of a bytes object, valid while the object lives; the decoders read it without the GIL.
struct ByteView {
  const uint8_t* data;
  size_t size;
};

ByteView byte_view(const py::bytes& data) {
  char* buffer = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &buffer, &size) != 0) throw py::error_already_set();
  return {reinterpret_cast<const uint8_t*>(buffer), static_cast<size_t>(size)};
}

// One tensor payload (plain or difference update: they differ only in `p`), decoded with the GIL released.
nnc::DecodedPayload decode_without_gil(const py::bytes& data, const nnc::LayerParams& p, int32_t* dst) {
  const ByteView in = byte_view(data);
  py::gil_scoped_release release;
  return nnc::decode_payload(in.data, in.size, p, dst);
}

py::tuple decode_payload(const py::bytes& data, torch::Tensor out, int64_t rows, int64_t width, int scan_order,
                         bool dq, int num_gtx, int profile, int cb_size, int cb_zero, bool has_qp, int qp_bits) {
  const int64_t count = checked_count(rows, width);
  require_tensor(out, torch::kInt32, count, "out");
  const nnc::LayerParams p = make_params(rows, width, scan_order, dq, num_gtx, profile, cb_size, cb_zero, has_qp,
                                         qp_bits);
  const nnc::DecodedPayload result = decode_without_gil(data, p, out.data_ptr<int32_t>());
  return py::make_tuple(result.qp_delta, result.consumed, entry_point_list(result.entry_points));
}

// Difference-update variants (TCA / HDSP, spec §13): `base` (int32, the parent's integers) and `history` (int8
// mask) are empty tensors when absent. Encoding returns (payload, entry points); decoding also reports the
// hist_dep_sig_prob_enabled_flag it read.
struct UpdateInputs {
  const int32_t* base = nullptr;
  const int8_t* history = nullptr;
};

UpdateInputs update_inputs(const torch::Tensor& base, const torch::Tensor& history, int64_t count) {
  UpdateInputs in;
  if (base.numel() > 0) {
    require_tensor(base, torch::kInt32, count, "base");
    in.base = base.data_ptr<int32_t>();
  }
  if (history.numel() > 0) {
    require_tensor(history, torch::kInt8, count, "history");
    in.history = history.data_ptr<int8_t>();
  }
  return in;
}

py::tuple encode_update_payload(const torch::Tensor& levels, int64_t rows, int64_t width, int scan_order, bool dq,
                                int num_gtx, int cb_size, int cb_zero, bool has_qp, int qp_bits, bool row_skip,
                                bool param_opt, int32_t qp_delta, bool parent_present, const torch::Tensor& base,
                                const torch::Tensor& history, bool hdsp) {
  const int64_t count = checked_count(rows, width);
  require_tensor(levels, torch::kInt32, count, "levels");
  nnc::LayerParams p = make_params(rows, width, scan_order, dq, num_gtx, 1, cb_size, cb_zero, has_qp, qp_bits);
  const UpdateInputs in = update_inputs(base, history, count);
  p.parent_present = parent_present;
  p.base = in.base;
  p.history = in.history;
  nnc::EncodeOptions opt;
  opt.row_skip = row_skip;
  opt.param_opt = param_opt;
  opt.qp_delta = qp_delta;
  opt.hdsp = hdsp;
  return encode_without_gil(levels.data_ptr<int32_t>(), p, opt);
}

py::tuple decode_update_payload(const py::bytes& data, torch::Tensor out, int64_t rows, int64_t width,
                                int scan_order, bool dq, int num_gtx, int cb_size, int cb_zero, bool has_qp,
                                int qp_bits, bool parent_present, const torch::Tensor& base,
                                const torch::Tensor& history) {
  const int64_t count = checked_count(rows, width);
  require_tensor(out, torch::kInt32, count, "out");
  nnc::LayerParams p = make_params(rows, width, scan_order, dq, num_gtx, 1, cb_size, cb_zero, has_qp, qp_bits);
  const UpdateInputs in = update_inputs(base, history, count);
  p.parent_present = parent_present;
  p.base = in.base;
  p.history = in.history;
  const nnc::DecodedPayload result = decode_without_gil(data, p, out.data_ptr<int32_t>());
  return py::make_tuple(result.qp_delta, result.consumed, entry_point_list(result.entry_points), result.hdsp);
}

// NNR_PT_BLOCK: the tensors of one block in coding order, one codeword. Every tensor carries a qp delta; the
// per-tensor lists (rows, widths, qp deltas, codebook sizes and zero offsets, TCA bases and HDSP histories,
// the last two empty tensors when absent) have one entry per tensor.
struct BlockLists {
  std::vector<nnc::LayerParams> params;
  std::vector<UpdateInputs> inputs;
};

BlockLists block_lists(const std::vector<torch::Tensor>& tensors, const std::vector<int64_t>& rows,
                       const std::vector<int64_t>& widths, int scan_order, bool dq, int num_gtx, int profile,
                       const std::vector<int>& cb_sizes, const std::vector<int>& cb_zeros, int qp_bits,
                       bool parent_present, const std::vector<torch::Tensor>& bases,
                       const std::vector<torch::Tensor>& histories, const char* what) {
  const size_t n = tensors.size();
  if (n == 0 || rows.size() != n || widths.size() != n || cb_sizes.size() != n || cb_zeros.size() != n ||
      bases.size() != n || histories.size() != n)
    throw nnc::UsageError("block lists must all have one entry per tensor (and at least one tensor)");
  BlockLists out;
  for (size_t i = 0; i < n; ++i) {
    const int64_t count = checked_count(rows[i], widths[i]);
    require_tensor(tensors[i], torch::kInt32, count, what);
    nnc::LayerParams p = make_params(rows[i], widths[i], scan_order, dq, num_gtx, profile, cb_sizes[i], cb_zeros[i],
                                     true, qp_bits);
    const UpdateInputs in = update_inputs(bases[i], histories[i], count);
    p.parent_present = parent_present;
    p.base = in.base;
    p.history = in.history;
    out.params.push_back(p);
    out.inputs.push_back(in);
  }
  return out;
}

py::tuple encode_block(const std::vector<torch::Tensor>& levels, const std::vector<int64_t>& rows,
                       const std::vector<int64_t>& widths, int scan_order, bool dq, int num_gtx, int profile,
                       const std::vector<int>& cb_sizes, const std::vector<int>& cb_zeros, int qp_bits,
                       const std::vector<int32_t>& qp_deltas, bool row_skip, bool param_opt, bool parent_present,
                       const std::vector<torch::Tensor>& bases, const std::vector<torch::Tensor>& histories,
                       bool hdsp) {
  const BlockLists lists = block_lists(levels, rows, widths, scan_order, dq, num_gtx, profile, cb_sizes, cb_zeros,
                                       qp_bits, parent_present, bases, histories, "levels");
  if (qp_deltas.size() != levels.size()) throw nnc::UsageError("one qp delta per block tensor expected");
  std::vector<nnc::BlockTensor> tensors;
  for (size_t i = 0; i < levels.size(); ++i) {
    nnc::EncodeOptions opt;
    opt.row_skip = row_skip;
    opt.param_opt = param_opt;
    opt.qp_delta = qp_deltas[i];
    opt.hdsp = hdsp;
    tensors.push_back({levels[i].data_ptr<int32_t>(), lists.params[i], opt});
  }
  nnc::EncodedPayload result;
  {
    py::gil_scoped_release release;
    result = nnc::encode_block_payload(tensors);
  }
  py::bytes payload(reinterpret_cast<const char*>(result.bytes.data()), result.bytes.size());
  return py::make_tuple(payload, entry_point_list(result.entry_points));
}

py::tuple decode_block(const py::bytes& data, const std::vector<torch::Tensor>& outs, const std::vector<int64_t>& rows,
                       const std::vector<int64_t>& widths, int scan_order, bool dq, int num_gtx, int profile,
                       const std::vector<int>& cb_sizes, const std::vector<int>& cb_zeros, int qp_bits,
                       bool parent_present, const std::vector<torch::Tensor>& bases,
                       const std::vector<torch::Tensor>& histories) {
  const BlockLists lists = block_lists(outs, rows, widths, scan_order, dq, num_gtx, profile, cb_sizes, cb_zeros,
                                       qp_bits, parent_present, bases, histories, "out");
  std::vector<int32_t*> dst;
  for (const torch::Tensor& t : outs) dst.push_back(t.data_ptr<int32_t>());
  const ByteView in = byte_view(data);
  nnc::DecodedBlock result;
  {
    py::gil_scoped_release release;
    result = nnc::decode_block_payload(in.data, in.size, lists.params, dst);
  }
  py::list hdsp;
  for (bool flag : result.hdsp) hdsp.append(flag);
  return py::make_tuple(result.qp_deltas, result.consumed, entry_point_list(result.entry_points), hdsp);
}

// float32(levels) * step in float32 (the reconstruction rule of spec §12.3), one pass, GIL released.
// `levels` may be an int32 view of `out` (same element size): each element is read before it is written.
void levels_to_float(const torch::Tensor& levels, torch::Tensor out, double step) {
  require_tensor(levels, torch::kInt32, levels.numel(), "levels");
  require_tensor(out, torch::kFloat32, levels.numel(), "out");
  const int32_t* src = levels.data_ptr<int32_t>();
  float* dst = out.data_ptr<float>();
  const int64_t n = levels.numel();
  const float s = static_cast<float>(step);
  py::gil_scoped_release release;
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) * s;
}

void trellis_quantize(const torch::Tensor& weights, torch::Tensor out, int64_t rows, int64_t width, int scan_order,
                      double qscale) {
  const int64_t count = checked_count(rows, width);
  require_tensor(weights, torch::kFloat32, count, "weights");
  require_tensor(out, torch::kInt32, count, "out");
  const nnc::LayerParams p = make_params(rows, width, scan_order, false, 11, 1, 0, 0, false, 8);
  const float* src = weights.data_ptr<float>();
  int32_t* dst = out.data_ptr<int32_t>();
  py::gil_scoped_release release;
  nnc::trellis_quantize(src, p, qscale, dst);
}

py::bytes encode_bin_script(const std::vector<int>& kinds, const std::vector<int>& args,
                            const std::vector<uint32_t>& values) {
  const std::vector<uint8_t> out = nnc::encode_bin_script(kinds, args, values);
  return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
}

py::tuple decode_bin_script(const py::bytes& data, const std::vector<int>& kinds, const std::vector<int>& args) {
  const ByteView in = byte_view(data);
  size_t consumed = 0;
  std::vector<uint32_t> values = nnc::decode_bin_script(in.data, in.size, kinds, args, &consumed);
  return py::make_tuple(values, consumed);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "DeepCABAC core of the ecqx NNC codec";
  py::register_exception<nnc::BitstreamError>(m, "NativeBitstreamError", PyExc_ValueError);
  m.def("encode_payload", &encode_payload);
  m.def("decode_payload", &decode_payload);
  m.def("encode_update_payload", &encode_update_payload);
  m.def("decode_update_payload", &decode_update_payload);
  m.def("encode_block", &encode_block);
  m.def("decode_block", &decode_block);
  m.def("levels_to_float", &levels_to_float);
  m.def("trellis_quantize", &trellis_quantize);
  m.def("scan_positions", &nnc::scan_positions);
  m.def("trace_context", &nnc::trace_context);
  m.def("encode_bin_script", &encode_bin_script);
  m.def("decode_bin_script", &decode_bin_script);
}
