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
// into a [d][16] tile. Then a score, its softmax and the probability-weighted sum of values are
// vertical operations, key field by key field, with keys and values read in place as scalars;
// nothing is summed across lanes. The two products that sum over queries in backward (dK and dV)
// run with lanes over the head width instead (a Row of d floats), reading the probabilities
// kept from the first pass. Sizes are compile-time constants: the head width D (4, 8, 16 or 32)
// and the number of query lanes FP (F rounded up to a multiple of 16, at most 64). Padded query
// lanes read a zero query and carry a zero output gradient, and are never written. exp is a
// polynomial accurate to a few float ulps.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

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
  // P^T and dS^T: [key g][query i]; rows up to F rounded up to kKeys are read by the dK / dV blocks
  constexpr int GP = FP;  // F <= FP and FP is a multiple of kKeys
  alignas(64) float pt[GP][FP];
  alignas(64) float dst[GP][FP];
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
  for (int64_t g = F; g < padded_keys; ++g) std::fill(pt[g], pt[g] + FP, 0.0f), std::fill(dst[g], dst[g] + FP, 0.0f);
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

Shape shape_of(const at::Tensor& qkv) {
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3, "qkv must be [B, F, 3, H, d], got ", qkv.sizes());
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.is_contiguous() && qkv.device().is_cpu(),
              "qkv must be a contiguous float32 CPU tensor");
  const Shape s{qkv.size(0), qkv.size(1), qkv.size(3), qkv.size(4)};
  TORCH_CHECK(s.fields >= 1 && s.fields <= 64, "fields must be in [1, 64], got ", s.fields);
  TORCH_CHECK(s.dim == 4 || s.dim == 8 || s.dim == 16 || s.dim == 32, "head width must be 4, 8, 16 or 32, got ",
              s.dim);
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

template <typename Fn, typename... Args>
void dispatch(const Shape& s, Args&&... args) {
  switch (s.dim) {
    case 4: return dispatch_fields<4, Fn>(s.fields, s, args...);
    case 8: return dispatch_fields<8, Fn>(s.fields, s, args...);
    case 16: return dispatch_fields<16, Fn>(s.fields, s, args...);
    default: return dispatch_fields<32, Fn>(s.fields, s, args...);
  }
}

struct Forward {
  template <int D, int FP, typename... Args>
  static void run(Args&&... args) { forward_all<D, FP>(args...); }
};

struct Backward {
  template <int D, int FP, typename... Args>
  static void run(Args&&... args) { backward_all<D, FP>(args...); }
};

}  // namespace

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
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({s.batch, s.fields, s.heads, s.dim}),
              "grad_out must be [B, F, H, d], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat && grad_out.device().is_cpu(),
              "grad_out must be a float32 CPU tensor");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({s.batch, s.heads, s.fields}) && lse.is_contiguous() &&
                  lse.scalar_type() == at::kFloat,
              "lse must be forward's contiguous float32 [B, H, F], got ", lse.sizes());
  const auto go = grad_out.contiguous();
  auto grad = at::empty_like(qkv);
  dispatch<Backward>(s, qkv.data_ptr<float>(), lse.data_ptr<float>(), go.data_ptr<float>(), grad.data_ptr<float>(),
                     static_cast<float>(scale));
  return grad;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "field self-attention forward: (out [B,F,H,d], lse [B,H,F])");
  m.def("backward", &backward, "field self-attention backward: grad of qkv [B,F,3,H,d]");
}
