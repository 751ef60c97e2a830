// A task's share of the problem: one batch element, one group and a block of its channels.
#pragma once

#include <algorithm>
#include <cstdint>

#include "scan_cpu_problem.h"

namespace vssm_cpu {

// What one task needs of the channel block [d0, d0 + w) of group k.
struct Block {
  int64_t b, k, d0, c0;  // c0: global channel of d0
  int w;
  const int64_t* index;  // this (batch, group)'s positions, or null
  int64_t pos(int64_t t) const { return index ? index[t] : t; }
};

inline Block make_block(const Problem& p, int64_t b, int64_t k, int64_t blk) {
  Block s;
  s.b = b;
  s.k = k;
  s.d0 = blk * p.block;
  s.c0 = k * p.dim + s.d0;
  s.w = static_cast<int>(std::min<int64_t>(p.block, p.dim - s.d0));
  s.index = p.index ? p.index + b * p.index_b + k * p.index_k : nullptr;
  return s;
}

}  // namespace vssm_cpu
