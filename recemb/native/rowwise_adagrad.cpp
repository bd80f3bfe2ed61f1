// fbgemm's exact row-wise Adagrad, fused into the backward of a pooled lookup, on the CPU.
//
// One training step of the rows a batch read: each row's gradient is the sum over every
// lookup of it in the batch (in every feature that reads its table), and then each distinct
// row takes one step:
//   state += mean(g * g);  w -= lr * g / (sqrt(state) + eps)
// fbgemm's CPU backward gets the sums by sorting the batch's lookups. Here they are summed in
// three passes, each over a working set that stays in cache:
//   1. feature by feature, a hash table sized to that feature's lookups (32 KiB of slots for
//      a batch of 4,096) sums its lookups per row, so its probes hit L1 whatever the batch
//      and the table (one table for the whole batch, 4 MiB at 106k lookups, missed L1 and L2);
//   2. a table read by several features (shared tables: `unified`, merged tables) merges
//      those features' row sums, now one per distinct row and feature, in a second hash table;
//   3. every distinct row takes its step, loading rows (and their state) a few ahead so that
//      the cache misses into a large table overlap.
// Only pass 3 touches the tables, once per distinct row: that is the part a smaller table
// makes cheaper. From 16k lookups on, passes 1 and 3 run on torch's intra-op threads, whole
// features to a thread, so the result does not depend on the thread count (1.6-1.8x faster
// on 2 threads than on 1 at 106k lookups, one run).
//
// Inputs, in TBE's layout (T virtual features, B samples):
//   grad_output [B, total_D]  the pooled output's gradient; feature t owns columns
//                             columns[t] .. columns[t + 1] (int32: fbgemm's D_offsets)
//   indices [N], offsets [T * B + 1]  bag (t, b) is indices[offsets[t * B + b] : offsets[t * B + b + 1]],
//                             each a row of feature t's own table (checked by the forward)
//   weight_starts [T]         where feature t's table's row 0 starts in `weights` (floats)
//   state_starts [T]          where it starts in `state` (one float per row): tables lie end
//                             to end there, so state_starts[t] + row names a row uniquely, and
//                             features with equal state_starts read the same table
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

namespace {

// A row's summed gradient: sums[offset .. offset + dim]. key < 0: merged into another entry.
struct Entry {
  int64_t key;     // state index of the row
  int64_t weight;  // its first float in weights
  int64_t dim;
  int64_t offset;
};

// A grow-only array left uninitialised (std::vector would zero-fill what it grows by).
template <typename T>
class Scratch {
 public:
  T* get(int64_t count) {
    if (count > size_) {
      size_ = std::max(count, 2 * size_);
      data_.reset(new T[size_]);
    }
    return data_.get();
  }

 private:
  std::unique_ptr<T[]> data_;
  int64_t size_ = 0;
};

// Buffers kept from call to call, one set per thread: allocating them each step would fault
// their pages in again every time. A step uses its calling thread's sums and entries, and
// each worker's own slots and rows.
struct Buffers {
  std::vector<int32_t> slots;  // the hash table of pass 1 or 2 (0 marks a free slot)
  Scratch<int64_t> rows;       // [1 + distinct rows] of the feature in pass 1; rows[0] unused
  Scratch<float> sums;         // pass 1's row sums: feature t's from sum_start[t]
  Scratch<Entry> entries;      // [N]: feature t's from lookup_start[t], rows in order of first lookup
};

Buffers& kept_buffers() {
  thread_local Buffers buffers;
  return buffers;
}

// The empty hash table of at least `factor` * count slots (a power of two), and its shift:
// key k's home slot is (k * golden) >> shift.
int reset_slots(std::vector<int32_t>& slots, int64_t count, int64_t factor) {
  int bits = 4;
  while ((int64_t{1} << bits) < factor * count) ++bits;
  slots.assign(size_t{1} << bits, 0);
  return 64 - bits;
}

inline uint64_t home(int64_t key, int shift) {
  return (static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> shift;
}

// Pass 1 for one feature (kDim: its width where known when compiling, else 0 and `dim`):
// sums[e * dim ..] becomes the summed gradient of the feature's row rows[e], e = 1 .. n - 1;
// returns n. A slot holds an index into rows, 0 where free.
template <int64_t kDim>
int64_t sum_feature(const float* go, int64_t total_d, int64_t B, const int64_t* off, const int64_t* idx,
                    int64_t dim, int32_t* slots, int shift, int64_t* rows, float* sums) {
  const uint64_t mask = (uint64_t{1} << (64 - shift)) - 1;
  constexpr int64_t kAhead = 8;  // samples whose gradient is loaded ahead of use
  int64_t n = 1;
  for (int64_t b = 0; b < B; ++b) {
    const float* g = go + b * total_d;
    if (b + kAhead < B) __builtin_prefetch(g + kAhead * total_d);
    for (int64_t i = off[b]; i < off[b + 1]; ++i) {
      const int64_t row = idx[i];
      uint64_t s = home(row, shift);
      while (slots[s] != 0 && rows[slots[s]] != row) s = (s + 1) & mask;
      if (slots[s] == 0) {  // the row's first lookup in this feature
        slots[s] = static_cast<int32_t>(n);
        rows[n] = row;
        float* __restrict__ acc = sums + n++ * dim;
        for (int64_t e = 0; e < (kDim > 0 ? kDim : dim); ++e) acc[e] = g[e];
      } else {
        float* __restrict__ acc = sums + slots[s] * dim;
        for (int64_t e = 0; e < (kDim > 0 ? kDim : dim); ++e) acc[e] += g[e];
      }
    }
  }
  return n;
}

using SumFeature = int64_t (*)(const float*, int64_t, int64_t, const int64_t*, const int64_t*, int64_t, int32_t*,
                               int, int64_t*, float*);

SumFeature sum_feature_for(int64_t dim) {
  switch (dim) {
    case 4: return sum_feature<4>;
    case 8: return sum_feature<8>;
    case 16: return sum_feature<16>;
    case 32: return sum_feature<32>;
    case 64: return sum_feature<64>;
    case 128: return sum_feature<128>;
    default: return sum_feature<0>;
  }
}

void check(const at::Tensor& t, at::ScalarType type, const char* name) {
  TORCH_CHECK(t.scalar_type() == type && t.is_contiguous() && t.device().is_cpu(), name,
              " must be a contiguous CPU tensor of ", type, ", got ", t.scalar_type());
}

}  // namespace

void step(const at::Tensor& grad_output, const at::Tensor& indices, const at::Tensor& offsets,
          const at::Tensor& columns, const at::Tensor& weight_starts, const at::Tensor& state_starts,
          at::Tensor& weights, at::Tensor& state, double lr, double eps) {
  check(grad_output, at::kFloat, "grad_output");
  check(weights, at::kFloat, "weights");
  check(state, at::kFloat, "state");
  check(indices, at::kLong, "indices");
  check(offsets, at::kLong, "offsets");
  check(columns, at::kInt, "columns");
  check(weight_starts, at::kLong, "weight_starts");
  check(state_starts, at::kLong, "state_starts");
  const int64_t T = weight_starts.size(0), B = grad_output.size(0), total_d = grad_output.size(1);
  TORCH_CHECK(state_starts.size(0) == T && columns.size(0) == T + 1 && offsets.size(0) == T * B + 1,
              "expected ", T, " features of ", B, " samples: columns [T + 1], offsets [T * B + 1], got ",
              columns.sizes(), " and ", offsets.sizes());
  TORCH_CHECK(indices.size(0) < (int64_t{1} << 30), "at most 2^30 lookups per step, got ", indices.size(0));
  const float* go = grad_output.data_ptr<float>();
  const int64_t* idx = indices.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int32_t* col = columns.data_ptr<int32_t>();
  const int64_t* w0 = weight_starts.data_ptr<int64_t>();
  const int64_t* s0 = state_starts.data_ptr<int64_t>();
  TORCH_CHECK(col[T] <= total_d, "columns end at ", col[T], " past grad_output's ", total_d);

  // feature t's lookups start at lookup_start[t] (in indices, and its entries' place) and
  // its sums at sum_start[t]: one dim per lookup, plus the unused entry 0 of each feature
  std::vector<int64_t> lookup_start(T + 1), sum_start(T + 1), entry_count(T, 0);
  for (int64_t t = 0; t < T; ++t) {
    lookup_start[t + 1] = off[(t + 1) * B] - off[0];
    sum_start[t + 1] = sum_start[t] + (off[(t + 1) * B] - off[t * B] + 1) * (col[t + 1] - col[t]);
  }
  Buffers& buf = kept_buffers();
  float* sums = buf.sums.get(sum_start[T]);
  Entry* entries = buf.entries.get(std::max<int64_t>(lookup_start[T], 1));

  // Threads take whole features, so no result depends on the thread count; below
  // kParallelLookups a parallel region costs more than it saves (grain T: one thread)
  constexpr int64_t kParallelLookups = 1 << 14;
  const int64_t grain = lookup_start[T] >= kParallelLookups ? 1 : std::max<int64_t>(T, 1);

  // 1. each feature's row sums
  at::parallel_for(0, T, grain, [&](int64_t begin, int64_t end) {
    Buffers& own = kept_buffers();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t dim = col[t + 1] - col[t], lookups = off[(t + 1) * B] - off[t * B];
      if (lookups == 0) continue;
      const int shift = reset_slots(own.slots, lookups, 2);
      int64_t* rows = own.rows.get(lookups + 1);
      const int64_t n = sum_feature_for(dim)(go + col[t], total_d, B, off + t * B, idx, dim, own.slots.data(),
                                             shift, rows, sums + sum_start[t]);
      Entry* mine = entries + lookup_start[t];
      for (int64_t e = 1; e < n; ++e)
        mine[e - 1] = {s0[t] + rows[e], w0[t] + rows[e] * dim, dim, sum_start[t] + e * dim};
      entry_count[t] = n - 1;
    }
  });

  // 2. tables read by several features: one sum per row (into its first feature's entry)
  std::vector<int64_t> order(T);  // features grouped by table, in feature order within one
  for (int64_t t = 0; t < T; ++t) order[t] = t;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s0[a] < s0[b]; });
  for (int64_t first = 0, last; first < T; first = last) {
    int64_t count = 0;
    for (last = first; last < T && s0[order[last]] == s0[order[first]]; ++last) count += entry_count[order[last]];
    if (last - first < 2) continue;
    const int shift = reset_slots(buf.slots, count, 2);
    const uint64_t mask = buf.slots.size() - 1;
    int32_t* slots = buf.slots.data();  // entry index + 1, 0 where free
    for (int64_t f = first; f < last; ++f) {
      const int64_t t = order[f];
      for (int64_t e = lookup_start[t]; e < lookup_start[t] + entry_count[t]; ++e) {
        const int64_t key = entries[e].key;
        uint64_t s = home(key, shift);
        while (slots[s] != 0 && entries[slots[s] - 1].key != key) s = (s + 1) & mask;
        if (slots[s] == 0) {
          slots[s] = static_cast<int32_t>(e + 1);
          continue;
        }
        float* __restrict__ acc = sums + entries[slots[s] - 1].offset;
        const float* __restrict__ g = sums + entries[e].offset;
        for (int64_t k = 0; k < entries[e].dim; ++k) acc[k] += g[k];
        entries[e].key = -1;
      }
    }
  }

  // 3. the step of every distinct row (after pass 2 no two live entries name one row)
  float* w = weights.data_ptr<float>();
  float* h = state.data_ptr<float>();
  const float rate0 = static_cast<float>(lr), epsilon = static_cast<float>(eps);
  at::parallel_for(0, T, grain, [&](int64_t begin, int64_t end) {
    constexpr int64_t kAhead = 16;  // rows loaded ahead of use
    for (int64_t t = begin; t < end; ++t) {
      const Entry* mine = entries + lookup_start[t];
      const int64_t n = entry_count[t];
      for (int64_t u = 0; u < n; ++u) {
        if (u + kAhead < n && mine[u + kAhead].key >= 0) {
          __builtin_prefetch(w + mine[u + kAhead].weight, 1);
          __builtin_prefetch(h + mine[u + kAhead].key, 1);
        }
        const Entry& entry = mine[u];
        if (entry.key < 0) continue;
        const float* g = sums + entry.offset;
        float squares = 0.0f;
        for (int64_t e = 0; e < entry.dim; ++e) squares += g[e] * g[e];
        h[entry.key] += squares / static_cast<float>(entry.dim);
        const float rate = rate0 / (std::sqrt(h[entry.key]) + epsilon);
        float* __restrict__ row = w + entry.weight;
        for (int64_t e = 0; e < entry.dim; ++e) row[e] -= rate * g[e];
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, "exact row-wise Adagrad step of the rows a pooled lookup read");
}
