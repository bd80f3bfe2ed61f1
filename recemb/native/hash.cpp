// recemb.hashing.hash_to_buckets in one pass over the ids, on the CPU.
//
// row = bucketize(splitmix64_finalizer(id + salt + golden), size), with the rules of
// recemb/hashing.py, bit for bit (the tests compare the two on every path):
//   size < 2**24: Lemire's multiply-shift of the hash's low 39 bits, ((h & (2**39 - 1)) * size) >> 39
//                 (for a power of two this equals the shift and mask the Python paths use);
//   size >= 2**24: (h & (2**63 - 1)) % size, a mask for a power of two.
// Optionally, ids in [0, own) keep their own row, unhashed (a table with a row per id), with
// `own` one int64 or one per run; own = 0 hashes every id.
// A salt is one int64, one per id, or one per run of ids (a hashed table's features are runs
// of its ids, each with its salt and size: R values to read instead of an [N] array). A size
// likewise, with the largest given: when it is below 2**24 every id takes the multiply-shift,
// as numpy's path does; else each id's own size picks its rule, compared as unsigned, as
// numpy's uint64 arithmetic does.
// numpy's path makes 12-14 passes over [N] int64 arrays; this makes one, with the salt and rule
// fixed per loop so that the loop is branch-free and vectorizes (except `%`: 64-bit division
// has no vector instruction). Chunks of ids go to threads with at::parallel_for where the
// kernel is built with OpenMP (recemb builds it without, so it runs in the calling thread:
// see OPENMP_KERNELS in __init__.py); each row depends on its id alone, so any number of
// threads gives the same bits (tested with an OpenMP build too).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kM1 = 0xBF58476D1CE4E5B9ULL;
constexpr uint64_t kM2 = 0x94D049BB133111EBULL;
constexpr int kFastBits = 39;
constexpr uint64_t kLow = (1ULL << kFastBits) - 1;
constexpr uint64_t kFastLimit = 1ULL << (63 - kFastBits);  // 2**24 buckets
constexpr uint64_t kMask63 = (1ULL << 63) - 1;
// ids per task: tens of microseconds of work, against a few for waking a thread
constexpr int64_t kGrain = 1 << 15;

// splitmix64's output steps on its state z (= value + golden); unsigned arithmetic wraps.
inline uint64_t finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * kM1;
  z = (z ^ (z >> 27)) * kM2;
  return z ^ (z >> 31);
}

inline uint64_t multiply_shift(uint64_t h, uint64_t size) {
  return ((h & kLow) * size) >> kFastBits;
}

// The state of id i: id + salt + golden.
struct OneSalt {
  uint64_t offset;  // salt + golden
  uint64_t operator()(uint64_t id, int64_t) const { return id + offset; }
};
struct SaltPerId {
  const int64_t* salt;
  uint64_t operator()(uint64_t id, int64_t i) const { return id + static_cast<uint64_t>(salt[i]) + kGolden; }
};

// The row of hash h (of id i).
struct MultiplyShift {
  uint64_t size;
  uint64_t operator()(uint64_t h, int64_t) const { return multiply_shift(h, size); }
};
struct Mask {  // a power of two >= 2**24
  uint64_t mask;
  uint64_t operator()(uint64_t h, int64_t) const { return h & mask; }
};
struct Modulo {
  uint64_t size;
  uint64_t operator()(uint64_t h, int64_t) const { return (h & kMask63) % size; }
};
struct MultiplyShiftPerId {  // every size below 2**24
  const int64_t* size;
  uint64_t operator()(uint64_t h, int64_t i) const { return multiply_shift(h, static_cast<uint64_t>(size[i])); }
};
struct RulePerId {  // each id's size picks its rule; no division by a size below 2**24 (0 included)
  const int64_t* size;
  uint64_t operator()(uint64_t h, int64_t i) const {
    const uint64_t s = static_cast<uint64_t>(size[i]);
    return s < kFastLimit ? multiply_shift(h, s) : (h & kMask63) % s;
  }
};

// own: ids below it (compared as unsigned, so negative ids are not) keep their own row; 0: none.
template <typename Id, typename Salt, typename Rule>
inline void fill(const Id* ids, Salt salt, Rule rule, uint64_t own, int64_t* out, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const uint64_t id = static_cast<uint64_t>(static_cast<int64_t>(ids[i]));  // int32: sign-extended
    const uint64_t row = rule(finalize(salt(id, i)), i);
    out[i] = static_cast<int64_t>(id < own ? id : row);
  }
}

// -- a salt or a size per id ------------------------------------------------------------------

template <typename Id, typename Salt, typename Rule>
void per_id_rows(const Id* ids, Salt salt, Rule rule, uint64_t own, int64_t* out, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { fill(ids, salt, rule, own, out, begin, end); });
}

template <typename Id, typename Salt>
void per_id_rule(const Id* ids, Salt salt, const int64_t* sizes, uint64_t size, bool fast_only, uint64_t own,
                 int64_t* out, int64_t n) {
  if (sizes != nullptr && fast_only) {
    per_id_rows(ids, salt, MultiplyShiftPerId{sizes}, own, out, n);
  } else if (sizes != nullptr) {
    per_id_rows(ids, salt, RulePerId{sizes}, own, out, n);
  } else if (size < kFastLimit) {
    per_id_rows(ids, salt, MultiplyShift{size}, own, out, n);
  } else if ((size & (size - 1)) == 0) {
    per_id_rows(ids, salt, Mask{size - 1}, own, out, n);
  } else {
    per_id_rows(ids, salt, Modulo{size}, own, out, n);
  }
}

// -- one salt and one size per run of ids (a single run: one for all) -------------------------

template <typename Id>
void fill_run(const Id* ids, uint64_t salt, uint64_t size, bool fast_only, uint64_t own, int64_t* out,
              int64_t begin, int64_t end) {
  const OneSalt state{salt + kGolden};
  if (fast_only || size < kFastLimit) {
    fill(ids, state, MultiplyShift{size}, own, out, begin, end);
  } else if ((size & (size - 1)) == 0) {
    fill(ids, state, Mask{size - 1}, own, out, begin, end);
  } else {
    fill(ids, state, Modulo{size}, own, out, begin, end);
  }
}

// One int64 for every id, or one per run.
struct PerRun {
  const int64_t* values;  // [R], or null for `value`
  int64_t value;
  uint64_t operator[](int64_t r) const { return static_cast<uint64_t>(values != nullptr ? values[r] : value); }
};

// ends [R]: where each run stops (nondecreasing, the last = n).
template <typename Id>
void run_rows(const Id* ids, const int64_t* ends, int64_t runs, PerRun salt, PerRun size, PerRun own, bool fast_only,
              int64_t* out, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t r = std::upper_bound(ends, ends + runs, begin) - ends;  // the run that holds id `begin`
    for (int64_t i = begin; i < end; ++r) {
      const int64_t stop = std::min(end, ends[r]);
      fill_run(ids, salt[r], size[r], fast_only, own[r], out, i, stop);
      i = stop;
    }
  });
}

template <typename Id>
void dispatch(const Id* ids, const int64_t* ends, int64_t runs, PerRun salt, PerRun size, PerRun own,
              int64_t max_size, int64_t* out, int64_t n) {
  const bool fast_only = size.values != nullptr && max_size < static_cast<int64_t>(kFastLimit);
  if (ends != nullptr) {
    run_rows(ids, ends, runs, salt, size, own, fast_only, out, n);
  } else if (salt.values == nullptr && size.values == nullptr) {
    const int64_t end = n;
    run_rows(ids, &end, 1, salt, size, own, false, out, n);
  } else if (salt.values != nullptr) {  // per id (no owns: they come with run_ends)
    per_id_rule(ids, SaltPerId{salt.values}, size.values, size.value, fast_only, own.value, out, n);
  } else {
    const OneSalt state{static_cast<uint64_t>(salt.value) + kGolden};
    per_id_rule(ids, state, size.values, size.value, fast_only, own.value, out, n);
  }
}

const int64_t* data_of(const c10::optional<at::Tensor>& t, int64_t numel, const char* name, const char* per,
                       at::Tensor& keep) {
  if (!t.has_value()) {
    return nullptr;
  }
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong, name, " must be an int64 CPU tensor, got ",
              t->scalar_type(), " on ", t->device());
  TORCH_CHECK(t->numel() == numel, name, " must have one value per ", per, " (", numel, "), got ", t->numel());
  keep = t->contiguous();
  return keep.data_ptr<int64_t>();
}

}  // namespace

// Rows [ids' shape] int64 of int64 or int32 ids. Without run_ends, salts and sizes hold one
// int64 per id, or are None for `salt` / `size` (>= 1). With run_ends [R] (where each run of
// the flattened ids stops), they hold one value per run, as owns does (None: `own` for every
// id; owns needs run_ends). max_size: the largest size.
at::Tensor hash_to_buckets(const at::Tensor& ids, const c10::optional<at::Tensor>& salts,
                           const c10::optional<at::Tensor>& sizes, const c10::optional<at::Tensor>& run_ends,
                           const c10::optional<at::Tensor>& owns, int64_t salt, int64_t size, int64_t own,
                           int64_t max_size) {
  TORCH_CHECK(ids.device().is_cpu(), "ids must be on the CPU, got ", ids.device());
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, "ids must be int64 or int32, got ",
              ids.scalar_type());
  TORCH_CHECK(sizes.has_value() || size >= 1, "buckets must be >= 1, got ", size);
  TORCH_CHECK(!owns.has_value() || run_ends.has_value(), "owns needs run_ends: one value per run");
  TORCH_CHECK(own >= 0, "own must be >= 0, got ", own);
  const int64_t n = ids.numel();
  at::Tensor ends_kept, salts_kept, sizes_kept, owns_kept;
  const int64_t runs = run_ends.has_value() ? run_ends->numel() : n;
  const int64_t* ends = data_of(run_ends, runs, "run_ends", "run", ends_kept);
  if (ends != nullptr) {  // a bad end would read past the salts or write past the rows
    TORCH_CHECK(runs > 0 ? ends[runs - 1] == n : n == 0, "run_ends must end at the number of ids, ", n);
    for (int64_t r = 0; r < runs; ++r) {
      TORCH_CHECK(ends[r] >= (r > 0 ? ends[r - 1] : 0), "run_ends must be nondecreasing from 0, got ", ends[r],
                  " at run ", r);
    }
  }
  const char* per = ends != nullptr ? "run" : "id";
  const int64_t* salt_ptr = data_of(salts, runs, "salt", per, salts_kept);
  const int64_t* size_ptr = data_of(sizes, runs, "buckets", per, sizes_kept);
  const int64_t* own_ptr = data_of(owns, runs, "own", per, owns_kept);
  for (int64_t r = 0; own_ptr != nullptr && r < runs; ++r) {
    TORCH_CHECK(own_ptr[r] >= 0, "own must be >= 0, got ", own_ptr[r], " at run ", r);
  }
  const PerRun salt_of{salt_ptr, salt}, size_of{size_ptr, size}, own_of{own_ptr, own};
  const at::Tensor in = ids.contiguous();
  at::Tensor out = at::empty(ids.sizes(), ids.options().dtype(at::kLong));
  int64_t* out_ptr = out.data_ptr<int64_t>();
  if (in.scalar_type() == at::kLong) {
    dispatch(in.data_ptr<int64_t>(), ends, runs, salt_of, size_of, own_of, max_size, out_ptr, n);
  } else {
    dispatch(in.data_ptr<int32_t>(), ends, runs, salt_of, size_of, own_of, max_size, out_ptr, n);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hash_to_buckets", &hash_to_buckets,
        "rows [ids' shape] int64: bucketize(salted splitmix64(ids), buckets), in one pass", py::arg("ids"),
        py::arg("salts"), py::arg("sizes"), py::arg("run_ends"), py::arg("owns"), py::arg("salt"), py::arg("size"),
        py::arg("own"), py::arg("max_size"));
}
