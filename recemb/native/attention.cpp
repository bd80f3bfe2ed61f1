// Self-attention over a few feature fields with narrow heads, forward and backward, on the CPU.
//
// CTR models attend over F ~ 20-60 fields with heads d ~ 8-32 wide, for thousands of samples
// per batch: many tiny problems, where a general kernel spends its time on set-up and layout
// copies. Here one problem is one (sample, head), held in cache from start to end, and the
// tensors keep the layout of the projection that makes them:
//   qkv [B, F, 3, H, d]  (the output of one Linear(in, 3 * H * d), viewed)
//   out [B, F, H, d]     (viewed as [B, F, H * d], the next layer's input, without a copy)
//   lse [B, H, F]        (each score row's log-sum-exp: backward recomputes the softmax from it,
//                         which is cheaper than writing and reading [B, H, F, F] probabilities)
// Scores are scaled by `scale` (1/sqrt(d) for scaled dot-product attention).
//
// Vector lanes run over query fields: 16 queries at a time (a Vec; GCC/Clang vector extensions,
// which the compiler maps to AVX-512, AVX2 or SSE registers), with the queries transposed once
// into a [d][FP] tile. Then a score, its softmax and the probability-weighted sum of values are
// vertical operations, key field by key field, with keys and values read in place as scalars;
// nothing is summed across lanes. The two products that sum over queries in backward (dK and dV)
// run with lanes over the head width instead (a Row of d floats), reading the probabilities
// kept from the first pass. Sizes are compile-time constants: the head width D (4, 8, 16 or 32)
// and the number of query lanes FP (F rounded up to a multiple of 16, at most 64). Padded query
// lanes read a zero query and carry a zero output gradient, and are never written. exp is a
// polynomial accurate to a few float ulps.
//
// A second pair of entry points (projected_*) takes the layer's input x [B, F, in] and the
// projection's weight instead of qkv, and makes each sample's qkv in cache (see below).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 16;  // query fields per Vec: FP is a multiple of it
constexpr int kKeys = 4;    // key fields per block in the dK / dV products

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec splat(float x) { return Vec{} + x; }

// exp(x) for x <= 0: 2^n * p(r) with x = n ln2 + r, |r| <= ln2/2, p a degree-6 Taylor
// polynomial (relative error < 2e-7). Below -87 (exp ~ 1.6e-38, still a normal float) it
// returns exp(-87).
inline Vec exp_nonpositive(Vec x) {
  const Vec y = x < -87.0f ? splat(-87.0f) : x;
  // round to nearest: truncation of t - 0.5 for t <= 0
  const IVec n = __builtin_convertvector(y * 1.44269504088896341f - 0.5f, IVec);
  const Vec k = __builtin_convertvector(n, Vec);
  const Vec r = y - k * 0.693145751953125f - k * 1.428606765330187e-06f;  // ln2 in two parts
  Vec p = splat(1.0f / 720.0f);
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const IVec bits = (n + 127) << 23;  // 2^n as floats' bits
  Vec two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// log(x) for x >= 1 (a softmax's sum, whose largest term is 1): x = 2^n m with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(t), t = (m - 1) / (m + 1), |t| < 0.172, by its series
// to t^9 (relative error < 1e-9 before rounding).
inline Vec log_at_least_one(Vec x) {
  IVec bits;
  std::memcpy(&bits, &x, sizeof(bits));
  IVec n = (bits >> 23) - 127;
  bits = (bits & 0x007fffff) | 0x3f800000;  // the mantissa m in [1, 2)
  Vec m;
  std::memcpy(&m, &bits, sizeof(m));
  const auto high = m > 1.41421356f;  // lanes of -1 (true) or 0
  m = high ? m * 0.5f : m;
  n -= high;
  const Vec t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
  Vec series = splat(1.0f / 9.0f);
  series = series * t2 + 1.0f / 7.0f;
  series = series * t2 + 1.0f / 5.0f;
  series = series * t2 + 1.0f / 3.0f;
  series = series * t2 + 1.0f;
  return __builtin_convertvector(n, Vec) * 0.693147180559945f + 2.0f * t * series;
}

// One (sample, head) of qkv [B, F, 3, H, D]: field f's query at base + f * row, its key
// H * D further, its value 2 * H * D further.
template <int D>
struct Fields {
  // d floats of one field (unaligned loads and stores through memcpy)
  typedef float Row __attribute__((vector_size(D * sizeof(float))));

  const float* __restrict__ base;
  int64_t F, H, row;

  Fields(const float* b, int64_t fields, int64_t heads) : base(b), F(fields), H(heads), row(3 * heads * D) {}

  const float* query(int64_t f) const { return base + f * row; }
  const float* key(int64_t g) const { return base + g * row + H * D; }
  const float* value(int64_t g) const { return base + g * row + 2 * H * D; }

  static Row load(const float* p) {
    Row r;
    std::memcpy(&r, p, sizeof(r));
    return r;
  }
  static void store(float* p, const Row& r) { std::memcpy(p, &r, sizeof(r)); }
};

// rows [F][stride] -> tile[e][f] = rows[f][e] * factor, lanes f >= F set to 0.
template <int D, int FP>
void transpose_in(const float* rows, int64_t stride, int64_t F, float factor, Vec (&tile)[D][FP / kLanes]) {
  float* flat = reinterpret_cast<float*>(tile);
  for (int e = 0; e < D; ++e) std::fill(flat + e * FP + F, flat + (e + 1) * FP, 0.0f);
  for (int64_t f = 0; f < F; ++f)
    for (int e = 0; e < D; ++e) flat[e * FP + f] = rows[f * stride + e] * factor;
}

// tile[e][f] -> rows[f][e] for f < F.
template <int D, int FP>
void transpose_out(const Vec (&tile)[D][FP / kLanes], int64_t F, float* rows, int64_t stride) {
  const float* flat = reinterpret_cast<const float*>(tile);
  for (int64_t f = 0; f < F; ++f)
    for (int e = 0; e < D; ++e) rows[f * stride + e] = flat[e * FP + f];
}

// s = <q, k_g> for 16 queries (qt: their transposed, scaled queries). Four partial sums: one
// chain of D dependent multiply-adds would wait on each one's latency.
template <int D>
inline Vec score(const Vec* qt, int nv, const float* __restrict__ k) {
  constexpr int kParts = 4;  // D is a multiple of it
  Vec part[kParts] = {};
  for (int e = 0; e < D; ++e) part[e % kParts] += k[e] * qt[e * nv];
  return (part[0] + part[1]) + (part[2] + part[3]);
}

template <int D, int FP>
void forward_problem(const Fields<D>& x, float scale, float* __restrict__ out, float* __restrict__ lse) {
  constexpr int NV = FP / kLanes;
  alignas(64) Vec qt[D][NV];
  transpose_in<D, FP>(x.query(0), x.row, x.F, scale, qt);
  alignas(64) Vec ot[D][NV];
  alignas(64) float row_lse[FP];
  for (int n = 0; n < NV; ++n) {
    alignas(64) Vec s[FP];  // scores of these 16 queries against key g
    Vec top = splat(-INFINITY);
    for (int64_t g = 0; g < x.F; ++g) {
      s[g] = score<D>(&qt[0][n], NV, x.key(g));
      top = top > s[g] ? top : s[g];
    }
    // out = sum_g exp(s_g - top) v_g / sum_g exp(s_g - top)
    Vec acc[D] = {}, total = Vec{};
    for (int64_t g = 0; g < x.F; ++g) {
      const Vec p = exp_nonpositive(s[g] - top);
      total += p;
      const float* v = x.value(g);
      for (int e = 0; e < D; ++e) acc[e] += v[e] * p;
    }
    const Vec inv = 1.0f / total;
    for (int e = 0; e < D; ++e) ot[e][n] = acc[e] * inv;
    const Vec lse_n = top + log_at_least_one(total);
    std::memcpy(row_lse + n * kLanes, &lse_n, sizeof(Vec));
  }
  transpose_out<D, FP>(ot, x.F, out, x.H * D);
  std::copy(row_lse, row_lse + x.F, lse);
}

template <int D, int FP>
void backward_problem(const Fields<D>& x, const float* __restrict__ dout, const float* __restrict__ lse, float scale,
                      float* __restrict__ grad) {
  using Row = typename Fields<D>::Row;
  constexpr int NV = FP / kLanes;
  const int64_t F = x.F, out_row = x.H * D;
  alignas(64) Vec qt[D][NV];   // queries, scaled, transposed
  alignas(64) Vec dot[D][NV];  // output gradients transposed; padded lanes 0, which zeroes their dS
  alignas(64) Vec dqt[D][NV];
  alignas(64) float lse_t[FP];
  transpose_in<D, FP>(x.query(0), x.row, F, scale, qt);
  transpose_in<D, FP>(dout, out_row, F, 1.0f, dot);
  std::copy(lse, lse + F, lse_t);
  std::fill(lse_t + F, lse_t + FP, 0.0f);
  // P^T and dS^T (dP^T until dS is made): [key g][query i]. The dK / dV blocks read rows up
  // to F rounded up to kKeys, which FP (a multiple of 16) holds.
  alignas(64) float pt[FP][FP];
  alignas(64) float dst[FP][FP];
  for (int n = 0; n < NV; ++n) {
    Vec row_lse;
    std::memcpy(&row_lse, lse_t + n * kLanes, sizeof(Vec));
    // P = exp(S - lse); dP_g = <dO, v_g>; delta = sum_g P_g dP_g
    Vec delta = Vec{};
    for (int64_t g = 0; g < F; ++g) {
      const Vec p = exp_nonpositive(score<D>(&qt[0][n], NV, x.key(g)) - row_lse);
      const Vec dp = score<D>(&dot[0][n], NV, x.value(g));
      delta += p * dp;
      std::memcpy(&pt[g][n * kLanes], &p, sizeof(Vec));
      std::memcpy(&dst[g][n * kLanes], &dp, sizeof(Vec));
    }
    // dS = P (dP - delta) scale; dQ = sum_g dS_g k_g
    Vec dq[D] = {};
    for (int64_t g = 0; g < F; ++g) {
      Vec p, dp;
      std::memcpy(&p, &pt[g][n * kLanes], sizeof(Vec));
      std::memcpy(&dp, &dst[g][n * kLanes], sizeof(Vec));
      const Vec ds = p * (dp - delta) * scale;
      std::memcpy(&dst[g][n * kLanes], &ds, sizeof(Vec));
      const float* k = x.key(g);
      for (int e = 0; e < D; ++e) dq[e] += k[e] * ds;
    }
    for (int e = 0; e < D; ++e) dqt[e][n] = dq[e];
  }
  transpose_out<D, FP>(dqt, F, grad, x.row);
  // dV_g = sum_i P[i, g] dO_i and dK_g = sum_i dS[i, g] q_i, kKeys keys at a time
  const int64_t padded_keys = (F + kKeys - 1) / kKeys * kKeys;
  for (int64_t g = F; g < padded_keys; ++g) {
    std::fill(pt[g], pt[g] + FP, 0.0f);
    std::fill(dst[g], dst[g] + FP, 0.0f);
  }
  for (int64_t g0 = 0; g0 < F; g0 += kKeys) {
    Row dv[kKeys] = {}, dk[kKeys] = {};
    for (int64_t i = 0; i < F; ++i) {
      const Row o = Fields<D>::load(dout + i * out_row);
      const Row q = Fields<D>::load(x.query(i));
      for (int j = 0; j < kKeys; ++j) {
        dv[j] += pt[g0 + j][i] * o;
        dk[j] += dst[g0 + j][i] * q;
      }
    }
    const int count = static_cast<int>(std::min<int64_t>(kKeys, F - g0));
    for (int j = 0; j < count; ++j) {
      Fields<D>::store(grad + (g0 + j) * x.row + x.H * D, dk[j]);
      Fields<D>::store(grad + (g0 + j) * x.row + 2 * x.H * D, dv[j]);
    }
  }
}

struct Shape {
  int64_t batch, fields, heads, dim;
};

// The sizes the kernel compiles: 1 to 64 fields, heads 4, 8, 16 or 32 wide.
void check_sizes(int64_t fields, int64_t dim) {
  TORCH_CHECK(fields >= 1 && fields <= 64, "fields must be in [1, 64], got ", fields);
  TORCH_CHECK(dim == 4 || dim == 8 || dim == 16 || dim == 32, "head width must be 4, 8, 16 or 32, got ", dim);
}

Shape shape_of(const at::Tensor& qkv) {
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3, "qkv must be [B, F, 3, H, d], got ", qkv.sizes());
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.is_contiguous() && qkv.device().is_cpu(),
              "qkv must be a contiguous float32 CPU tensor");
  const Shape s{qkv.size(0), qkv.size(1), qkv.size(3), qkv.size(4)};
  check_sizes(s.fields, s.dim);
  return s;
}

// Calls body(fields, task, out_offset, in_offset) for every (sample, head) in parallel:
// task = b * H + h; out_offset locates the problem in [B, F, H, d] tensors, in_offset in
// [B, F, 3, H, d] ones.
template <int D, typename Body>
void for_each_problem(const Shape& s, const float* in, const Body& body) {
  const int64_t F = s.fields, H = s.heads;
  at::parallel_for(0, s.batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, h = task % H;
      const int64_t in_offset = b * F * 3 * H * D + h * D;
      body(Fields<D>(in + in_offset, F, H), task, b * F * H * D + h * D, in_offset);
    }
  });
}

template <int D, int FP>
void forward_all(const Shape& s, const float* in, float* out, float* lse, float scale) {
  for_each_problem<D>(s, in, [&](const Fields<D>& x, int64_t task, int64_t out_offset, int64_t) {
    forward_problem<D, FP>(x, scale, out + out_offset, lse + task * s.fields);
  });
}

template <int D, int FP>
void backward_all(const Shape& s, const float* in, const float* lse, const float* dout, float* grad, float scale) {
  for_each_problem<D>(s, in, [&](const Fields<D>& x, int64_t task, int64_t out_offset, int64_t in_offset) {
    backward_problem<D, FP>(x, dout + out_offset, lse + task * s.fields, scale, grad + in_offset);
  });
}

// Calls Fn::run<D, FP> with the head width and padded field count as compile-time constants.
template <int D, typename Fn, typename... Args>
void dispatch_fields(int64_t fields, Args&&... args) {
  if (fields <= 16) return Fn::template run<D, 16>(args...);
  if (fields <= 32) return Fn::template run<D, 32>(args...);
  if (fields <= 48) return Fn::template run<D, 48>(args...);
  return Fn::template run<D, 64>(args...);
}

template <typename Fn, typename S, typename... Args>
void dispatch(const S& s, Args&&... args) {
  switch (s.dim) {
    case 4: return dispatch_fields<4, Fn>(s.fields, s, args...);
    case 8: return dispatch_fields<8, Fn>(s.fields, s, args...);
    case 16: return dispatch_fields<16, Fn>(s.fields, s, args...);
    default: return dispatch_fields<32, Fn>(s.fields, s, args...);
  }
}

// A kernel template as the type `dispatch` takes: Name::run<D, FP>(args) calls fn<D, FP>(args).
#define DISPATCHABLE(Name, fn)                      \
  struct Name {                                     \
    template <int D, int FP, typename... Args>      \
    static void run(Args&&... args) {               \
      fn<D, FP>(args...);                           \
    }                                               \
  }

DISPATCHABLE(Forward, forward_all);
DISPATCHABLE(Backward, backward_all);

// -- The same attention with its q/k/v projection fused in --------------------------------------
// x [B, F, in] and the projection's weight w [3 H d, in] (nn.Linear's layout, rows ordered
// (3, H, d)) instead of qkv: each sample's qkv [F, 3 H d] = x_b w^T is made in a buffer that
// stays in cache, used by the per-head problems above, and never written out; backward makes
// it again (cheaper than writing and reading it: in ~ 16 against 3 H d ~ 48 floats per field)
// and turns the sample's dqkv into dx_b = dqkv w and a share of dw = sum_b dqkv^T x_b.

// wt [in][3 H d] = w^T, so that a field's projection is a sum of rows of wt (vectors over 3 H d).
std::vector<float> transposed(const float* w, int64_t rows, int64_t cols) {
  std::vector<float> t(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = w[r * cols + c];
  return t;
}

// out (+)= A B for small A [rows][depth] (element (r, j) at a[r * a_row + j * a_col]) and
// B [depth][cols] (row-major): tiles of 4 rows x 16 columns, whose 4 accumulators are
// independent chains of multiply-adds; columns past the last full 16 go one at a time.
template <bool kAccumulate>
void small_matmul(const float* __restrict__ a, int64_t a_row, int64_t a_col, int64_t rows, int64_t depth,
                  const float* __restrict__ b, int64_t cols, float* __restrict__ out) {
  constexpr int kTileRows = 4;
  const int64_t full_cols = cols / kLanes * kLanes;
  for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
    const int count = static_cast<int>(std::min<int64_t>(kTileRows, rows - r0));
    const float* ar[kTileRows];
    for (int i = 0; i < kTileRows; ++i) ar[i] = a + std::min<int64_t>(r0 + i, rows - 1) * a_row;  // past rows: a repeat
    for (int64_t c0 = 0; c0 < full_cols; c0 += kLanes) {
      Vec acc[kTileRows] = {};
      for (int64_t j = 0; j < depth; ++j) {
        Vec bj;
        std::memcpy(&bj, b + j * cols + c0, sizeof(Vec));
        for (int i = 0; i < kTileRows; ++i) acc[i] += ar[i][j * a_col] * bj;
      }
      for (int i = 0; i < count; ++i) {
        float* o = out + (r0 + i) * cols + c0;
        if (kAccumulate) {
          Vec prev;
          std::memcpy(&prev, o, sizeof(Vec));
          acc[i] += prev;
        }
        std::memcpy(o, &acc[i], sizeof(Vec));
      }
    }
    for (int64_t c = full_cols; c < cols; ++c)
      for (int i = 0; i < count; ++i) {
        float t = kAccumulate ? out[(r0 + i) * cols + c] : 0.0f;
        for (int64_t j = 0; j < depth; ++j) t += ar[i][j * a_col] * b[j * cols + c];
        out[(r0 + i) * cols + c] = t;
      }
  }
}

// qkv [F][width] = x [F][in] wt [in][width]
void project(const float* x, const float* wt, int64_t F, int64_t in, int64_t width, float* qkv) {
  small_matmul<false>(x, in, 1, F, in, wt, width, qkv);
}

struct ProjectedShape {
  int64_t batch, fields, in, heads, dim;
  int64_t width() const { return 3 * heads * dim; }  // qkv floats per field
};

ProjectedShape projected_shape_of(const at::Tensor& x, const at::Tensor& w, int64_t heads) {
  TORCH_CHECK(x.dim() == 3, "x must be [B, F, in], got ", x.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(1) == x.size(2), "w must be [3 * heads * d, in] with in = ", x.size(2), ", got ",
              w.sizes());
  TORCH_CHECK(heads >= 1 && w.size(0) % (3 * heads) == 0, "w's rows (", w.size(0), ") must be 3 * heads (", heads,
              ") * d");
  for (const at::Tensor* t : {&x, &w})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
                "x and w must be contiguous float32 CPU tensors");
  const ProjectedShape s{x.size(0), x.size(1), x.size(2), heads, w.size(0) / (3 * heads)};
  check_sizes(s.fields, s.dim);
  return s;
}

template <int D, int FP>
void projected_forward_all(const ProjectedShape& s, const float* x, const float* w, float* out, float* lse,
                           float scale) {
  const int64_t F = s.fields, H = s.heads, width = s.width();
  const std::vector<float> wt = transposed(w, width, s.in);
  at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qkv(F * width);
    for (int64_t b = begin; b < end; ++b) {
      project(x + b * F * s.in, wt.data(), F, s.in, width, qkv.data());
      for (int64_t h = 0; h < H; ++h)
        forward_problem<D, FP>(Fields<D>(qkv.data() + h * D, F, H), scale, out + b * F * H * D + h * D,
                               lse + (b * H + h) * F);
    }
  });
}

// Samples per share of dw: shares are summed in order, so dw's bits do not depend on how many
// threads split the batch (where the kernel is built with OpenMP; recemb builds it without,
// so at::parallel_for runs in the calling thread: see OPENMP_KERNELS in __init__.py).
constexpr int64_t kShare = 32;

template <int D, int FP>
void projected_backward_all(const ProjectedShape& s, const float* x, const float* w, const float* lse,
                            const float* dout, float* dx, float* dw, float scale) {
  const int64_t F = s.fields, H = s.heads, in = s.in, width = s.width();
  const std::vector<float> wt = transposed(w, width, in);
  const int64_t shares = (s.batch + kShare - 1) / kShare;
  std::vector<float> dw_shares(shares * width * in, 0.0f);
  at::parallel_for(0, shares, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qkv(F * width), dqkv(F * width);
    for (int64_t share = begin; share < end; ++share) {
      float* __restrict__ dw_share = dw_shares.data() + share * width * in;  // [width][in]
      for (int64_t b = share * kShare; b < std::min(s.batch, (share + 1) * kShare); ++b) {
        const float* xb = x + b * F * in;
        project(xb, wt.data(), F, in, width, qkv.data());
        for (int64_t h = 0; h < H; ++h)
          backward_problem<D, FP>(Fields<D>(qkv.data() + h * D, F, H), dout + b * F * H * D + h * D,
                                  lse + (b * H + h) * F, scale, dqkv.data() + h * D);
        // dx_b [F][in] = dqkv [F][width] w [width][in]; dw [width][in] += dqkv^T [width][F] x_b [F][in]
        small_matmul<false>(dqkv.data(), width, 1, F, width, w, in, dx + b * F * in);
        small_matmul<true>(dqkv.data(), 1, width, width, F, xb, in, dw_share);
      }
    }
  });
  std::fill(dw, dw + width * in, 0.0f);
  for (int64_t share = 0; share < shares; ++share)
    for (int64_t i = 0; i < width * in; ++i) dw[i] += dw_shares[share * width * in + i];
}

DISPATCHABLE(ProjectedForward, projected_forward_all);
DISPATCHABLE(ProjectedBackward, projected_backward_all);

}  // namespace

// grad_out [B, F, H, d] and forward's lse [B, H, F] for a problem of shape s.
template <typename S>
void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& lse, const S& s) {
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({s.batch, s.fields, s.heads, s.dim}),
              "grad_out must be [B, F, H, d], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat && grad_out.device().is_cpu(),
              "grad_out must be a float32 CPU tensor");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({s.batch, s.heads, s.fields}) && lse.is_contiguous() &&
                  lse.scalar_type() == at::kFloat,
              "lse must be forward's contiguous float32 [B, H, F], got ", lse.sizes());
}

// Returns (out [B, F, H, d], lse [B, H, F]): lse, each score row's log-sum-exp, for backward.
std::vector<at::Tensor> forward(const at::Tensor& qkv, double scale) {
  const Shape s = shape_of(qkv);
  auto out = at::empty({s.batch, s.fields, s.heads, s.dim}, qkv.options());
  auto lse = at::empty({s.batch, s.heads, s.fields}, qkv.options());
  dispatch<Forward>(s, qkv.data_ptr<float>(), out.data_ptr<float>(), lse.data_ptr<float>(),
                    static_cast<float>(scale));
  return {out, lse};
}

// Gradient of qkv [B, F, 3, H, d] from grad_out [B, F, H, d] and forward's lse.
at::Tensor backward(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& lse, double scale) {
  const Shape s = shape_of(qkv);
  check_backward_inputs(grad_out, lse, s);
  const auto go = grad_out.contiguous();
  auto grad = at::empty_like(qkv);
  dispatch<Backward>(s, qkv.data_ptr<float>(), lse.data_ptr<float>(), go.data_ptr<float>(), grad.data_ptr<float>(),
                     static_cast<float>(scale));
  return grad;
}

// Returns (out [B, F, H, d], lse [B, H, F]) of attention over qkv = x w^T, viewed [B, F, 3, H, d].
std::vector<at::Tensor> projected_forward(const at::Tensor& x, const at::Tensor& w, int64_t heads, double scale) {
  const ProjectedShape s = projected_shape_of(x, w, heads);
  auto out = at::empty({s.batch, s.fields, s.heads, s.dim}, x.options());
  auto lse = at::empty({s.batch, s.heads, s.fields}, x.options());
  dispatch<ProjectedForward>(s, x.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr<float>(),
                             lse.data_ptr<float>(), static_cast<float>(scale));
  return {out, lse};
}

// Returns (dx [B, F, in], dw [3 H d, in]) from grad_out [B, F, H, d] and projected_forward's lse.
std::vector<at::Tensor> projected_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w,
                                           const at::Tensor& lse, int64_t heads, double scale) {
  const ProjectedShape s = projected_shape_of(x, w, heads);
  check_backward_inputs(grad_out, lse, s);
  const auto go = grad_out.contiguous();
  auto dx = at::empty_like(x);
  auto dw = at::empty_like(w);
  dispatch<ProjectedBackward>(s, x.data_ptr<float>(), w.data_ptr<float>(), lse.data_ptr<float>(),
                              go.data_ptr<float>(), dx.data_ptr<float>(), dw.data_ptr<float>(),
                              static_cast<float>(scale));
  return {dx, dw};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "field self-attention forward: (out [B,F,H,d], lse [B,H,F])");
  m.def("backward", &backward, "field self-attention backward: grad of qkv [B,F,3,H,d]");
  m.def("projected_forward", &projected_forward, "attention over qkv = x w^T: (out [B,F,H,d], lse [B,H,F])");
  m.def("projected_backward", &projected_backward, "its backward: (dx [B,F,in], dw [3Hd,in])");
}
