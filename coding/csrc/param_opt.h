// NNCodec's choice of context parameter sets (ecoIdx) by a pseudo-coding pass (spec nnc-bitstream.md §8.2).
#pragma once

#include <cstdint>
#include <vector>

#include "binarization.h"
#include "nnc_core.h"
#include "scan.h"
#include "temporal.h"

namespace nnc::detail {

// The ecoIdx of every entry of `list` (0 where not signalled): each context's bins of the tensor (stored values,
// the walk of the real coder over `zero_rows`) are replayed through all nine parameter sets and the cheapest
// set wins, counting 3 bits for signalling a set other than 0.
std::vector<int> choose_eco(const int32_t* levels, const LayerParams& p, const Geometry& g, const Layout& L,
                            const uint8_t* zero_rows, const std::vector<EcoEntry>& list);

// The same choice for a difference-update tensor whose contexts depend on the position (TCA base values,
// HDSP mask; temporal.h). NNCodec's pass quirks are kept: stored values (r for DQ) feed the binarization and
// the neighbour, and block-row boundaries restart only the candidate states.
std::vector<int> choose_eco_update(const int32_t* levels, const LayerParams& p, const Geometry& g, const Layout& L,
                                   const uint8_t* zero_rows, const std::vector<EcoEntry>& list,
                                   const UpdateContexts& uc);

}  // namespace nnc::detail
