// DeepCABAC core of the NNC (ISO/IEC 15938-17) codec: plain C++17, no torch or Python headers.
//
// Entry points (for the binding and for standalone drivers such as a sanitizer build):
//   nnc::encode_payload(levels, params, options)      -> bytes of one NDU codeword + entry points
//   nnc::decode_payload(data, size, params, out)      -> decodes one NDU codeword into `out`
//   nnc::encode_block_payload / decode_block_payload  -> several tensors in one codeword (NNR_PT_BLOCK)
//   nnc::trellis_quantize(weights, params, qscale, out)  8-state dependent quantizer (lambda = 0)
//   nnc::scan_positions(rows, width, scan_order)      coding order of positions (for tests)
//   nnc::trace_context(eco, bins)                      context-model states after each update (for tests)
//   nnc::encode_bin_script / nnc::decode_bin_script    raw arithmetic-coder exercise (for tests)
// Errors: a malformed stream throws nnc::BitstreamError; bad arguments throw nnc::UsageError.
// Both derive from std::exception; the decoder never reads outside [data, data + size).
//
// Units (each with its header; the internal ones in namespace nnc::detail):
//   engine          arithmetic encoder/decoder and context models (spec §4, §5); raw-engine test API
//   binarization    context layout, level binarization, ecoIdx list (§6, §7, §8.1)
//   param_opt       NNCodec's ecoIdx choice by a pseudo-coding pass (§8.2)
//   scan            geometry, parameter checks, scan order, row skipping walk (§3.3, §9, §10)
//   dependent_quant DQ state machine, level/index mapping, trellis quantizer (§11)
//   temporal        context choice and level binarization of difference updates (TCA, HDSP; spec §6, §13)
//   nnc_core        one tensor in an NDU codeword, entry points, encode_payload / decode_payload (§3, App. C/D)
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace nnc {

class BitstreamError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class UsageError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Geometry and tool flags of one tensor inside an NDU codeword (spec §3.3).
struct LayerParams {
  int64_t num_rows = 1;      // dims[0] (numWeights / layerWidth)
  int64_t layer_width = 1;   // product of dims[1:], 1 for 1-D
  int scan_order = 0;        // header scan_order 0..4 (forced to 0 internally per §3.3)
  bool dq = false;           // dependent quantization (levels are reconstruction indices r)
  int num_gtx = 11;          // N = cabac_unary_length_minus1 + 1, 1..256
  int profile = 1;           // general_profile_idc 0 or 1
  int codebook_size = 0;     // 0: no codebook; else levels are codebook indices minus zero offset
  int codebook_zero_offset = 0;
  bool has_qp = false;       // PT_FLOAT: qp delta as EP(qp_bits) precedes the tensor
  int qp_bits = 8;           // 6 + qp_density
  // Difference updates (profile 1, spec §13; see temporal.h). parent_present: the NDU carries
  // parent_node_id_present_flag = 1, so hist_dep_sig_prob_enabled_flag is coded before the row-skip syntax.
  bool parent_present = false;
  const int32_t* base = nullptr;    // TCA: the parent's stored integers, same size as the tensor (nullptr: off)
  const int8_t* history = nullptr;  // HDSP: 1 where an earlier update was nonzero (nullptr: an all-zero mask)
};

struct EncodeOptions {
  bool row_skip = true;      // profile 1: signal all-zero rows
  bool param_opt = true;     // NNCodec's ecoIdx choice (spec §8.2); false: all ecoIdx 0
  int32_t qp_delta = 0;      // qp - quantization_parameter (written when params.has_qp)
  bool hdsp = false;         // hist_dep_sig_prob_enabled_flag to write (needs params.parent_present)
};

// One entry of cabac_entry_point_list (spec §2.10, §9.4).
struct EntryPoint {
  int64_t bit_delta;         // D[j]: decoder bit distance between block rows j and j+1
  uint32_t value8;           // 8-bit arithmetic-decoder value at the start of block row j+1
  uint32_t dq_state;         // DQ state at the start of block row j+1
};

struct EncodedPayload {
  std::vector<uint8_t> bytes;
  std::vector<EntryPoint> entry_points;
};

struct DecodedPayload {
  int32_t qp_delta = 0;
  size_t consumed = 0;       // bytes consumed including the terminating bin
  bool hdsp = false;         // hist_dep_sig_prob_enabled_flag read from the payload
  std::vector<EntryPoint> entry_points;
};

// Effective scan order (spec §3.3): 0 for 1-D, width 1 or a single row.
int effective_scan_order(const LayerParams& p);

// Encodes one tensor (levels in C order, num_rows * layer_width values) as a complete NDU codeword:
// [qp delta] + tensor + terminating bin + flush; entry points are derived from the encoder state at each
// block-row start (spec §9.4), without decoding the result.
EncodedPayload encode_payload(const int32_t* levels, const LayerParams& p, const EncodeOptions& opt);

// Decodes one NDU codeword of a single tensor into out (num_rows * layer_width values).
// Throws BitstreamError when the payload is malformed or ends too early.
DecodedPayload decode_payload(const uint8_t* data, size_t size, const LayerParams& p, int32_t* out);

// NNR_PT_BLOCK (spec §2.8, §3.1): several tensors of one layer in one codeword, each with its own qp delta and
// context initialisation; their entry point lists are concatenated in coding order.
struct BlockTensor {
  const int32_t* levels;
  LayerParams params;
  EncodeOptions options;
};

struct DecodedBlock {
  std::vector<int32_t> qp_deltas;  // one per tensor (0 where the tensor has no qp)
  std::vector<bool> hdsp;          // hist_dep_sig_prob_enabled_flag read for each tensor
  size_t consumed = 0;
  std::vector<EntryPoint> entry_points;
};

EncodedPayload encode_block_payload(const std::vector<BlockTensor>& tensors);
// Decodes the tensors of one block codeword in order into outs[i] (params[i] geometry each).
DecodedBlock decode_block_payload(const uint8_t* data, size_t size, const std::vector<LayerParams>& params,
                                  const std::vector<int32_t*>& outs);

// NNCodec's 8-state trellis quantizer (lambda = 0, spec §11.6); out receives reconstruction indices r.
// Throws UsageError for a qscale that is not finite and positive, a NaN or infinite weight, or a
// qscale·|w| beyond 2^31 (or a resulting reconstruction index outside int32).
void trellis_quantize(const float* weights, const LayerParams& p, double qscale, int32_t* out);

// Flat positions in coding order (spec §9.2) for the effective scan order.
std::vector<int64_t> scan_positions(int64_t num_rows, int64_t layer_width, int scan_order);

// Context model states (s0, p) after each update with the given bins, starting from ecoIdx eco.
std::vector<std::pair<int, int>> trace_context(int eco, const std::vector<int>& bins);

// Raw engine exercise: ops are (kind, arg, value) with kind 0 = context bin on context arg (all contexts start
// at ecoIdx 0), 1 = `arg` bypass bins carrying value, 2 = range reset (arg, value ignored).
// Ends with terminating bin + flush.
std::vector<uint8_t> encode_bin_script(const std::vector<int>& kinds, const std::vector<int>& args,
                                       const std::vector<uint32_t>& values);
// Decodes the same script; returns the decoded values and sets consumed (terminating bin must be 1).
std::vector<uint32_t> decode_bin_script(const uint8_t* data, size_t size, const std::vector<int>& kinds,
                                        const std::vector<int>& args, size_t* consumed);

}  // namespace nnc
