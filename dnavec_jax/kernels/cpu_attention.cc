// Fused multi-head attention for XLA:CPU inference, called through jax.ffi (dnavec_jax/kernels/cpu_attention.py).
//
// softmax(Q K^T * scale, padding masked) V for (batch, length, heads, head_dim) float32 inputs, with the
// numbers of jax.nn.dot_product_attention's XLA path: scores scaled after the product, masked keys at
// 0.7 x the float32 minimum (so a row with no real key attends uniformly), float32 softmax. XLA:CPU has
// no fused attention: it writes each head's L x L scores, runs mask, max, exp, sum and divide as separate
// passes and multiplies by V. Here one work item is one (example, head, block of queries): K^T and V are
// packed once into cache-sized buffers, and a few query rows at a time go through the scores (a register
// tile of FMAs), an in-cache softmax and the product with V. Keys past an example's last real key are
// never touched (their weight is exactly 0). Work items run on XLA's intra-op thread pool.
//
// Built at first use with the machine's C++ compiler and -march=native (so the vector width is the CPU's);
// GCC/Clang vector extensions, no intrinsics, so it builds for AVX-512, AVX2, SSE and NEON alike.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kWidth = 16;  // floats in a vector register
constexpr int kRows = 6;    // query rows per register tile: 6 x 4 accumulators of 32 registers
#elif defined(__AVX__)
constexpr int kWidth = 8;
constexpr int kRows = 3;    // 3 x 4 accumulators of 16 registers
#elif defined(__aarch64__)
constexpr int kWidth = 4;
constexpr int kRows = 6;    // NEON: 32 registers
#else
constexpr int kWidth = 4;
constexpr int kRows = 3;    // SSE and others: 16 registers
#endif
constexpr int kCols = 4;                  // vectors per register-tile row
constexpr int kTile = kWidth * kCols;     // keys (scores) or head dims (output) per register tile
constexpr int kAlign = 64;

typedef float Vec __attribute__((vector_size(kWidth * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kWidth * sizeof(float))));

inline Vec load(const float* p) { Vec v; std::memcpy(&v, p, sizeof(Vec)); return v; }
inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }
inline Vec splat(float x) { return x - Vec{}; }  // x - 0 is x (also for -0): one broadcast
inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// exp(x) for x <= 0 (x = score - row max): Cephes' expf polynomial after reduction by ln 2, within 1 ulp
// of exp over [-87, 0] (checked); exactly 0 below -87.3, where float32's exp underflows, so masked keys
// get weight 0, as in XLA.
inline Vec exp_nonpositive(Vec x) {
  const Vec low = splat(-87.33654f);
  const IVec underflow = x < low;
  x = x < low ? low : x;
  const Vec magic = splat(12582912.0f);  // 1.5 x 2^23: adding it rounds to an integer
  const Vec shifted = x * splat(1.44269504088896341f) + magic;
  const Vec n = shifted - magic;
  const Vec r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  Vec p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * (r * r) + r + splat(1.0f);
  IVec bits;
  std::memcpy(&bits, &shifted, sizeof(Vec));
  IVec magic_bits;
  std::memcpy(&magic_bits, &magic, sizeof(Vec));
  const IVec exponent = (bits - magic_bits + 127) << 23;
  Vec scale;
  std::memcpy(&scale, &exponent, sizeof(Vec));
  const Vec result = p * scale;
  return underflow ? splat(0.0f) : result;
}

// Per-thread scratch that only grows: work items reuse it, so no allocation (nor the page faults of fresh
// large allocations) happens per item.
struct Scratch {
  float* data = nullptr;
  int64_t size = 0;
  ~Scratch() { std::free(data); }
  float* get(int64_t n) {
    if (n > size) {
      std::free(data);
      size = round_up(n, 4096);
      data = static_cast<float*>(std::aligned_alloc(kAlign, size * sizeof(float)));
      if (data == nullptr) {  // a few hundred KB: the process is out of memory anyway
        std::fputs("dnavec cpu attention: out of memory for scratch\n", stderr);
        std::abort();
      }
    }
    return data;
  }
};

struct Shape {
  int64_t batch, queries, keys, heads, head_dim;
};

constexpr int kGroups = 8;                // register tiles of rows per query block
constexpr int kBlock = kRows * kGroups;   // query rows whose scores are kept (kBlock x keys floats, in L2)

// One (example, head, query range): out[b, q0:q1, h, :]. The query range goes kBlock rows at a time;
// each key tile (kTile keys of K^T, and of V) stays in L1 while every row tile of the block passes it.
void attend(const Shape& s, const float* q, const float* k, const float* v, const bool* keep, float scale,
            float* out, int64_t b, int64_t h, int64_t q0, int64_t q1) {
  const int64_t d = s.head_dim, row = s.heads * d;  // row: stride between positions
  const bool* keep_b = keep + b * s.keys;
  int64_t used = 0;  // keys up to the last real one
  for (int64_t j = 0; j < s.keys; ++j) {
    if (keep_b[j]) used = j + 1;
  }
  const float masked = 0.7f * std::numeric_limits<float>::lowest();
  if (used == 0) used = s.keys;  // no real key: every score is `masked`, uniform weights over all keys
  const int64_t kp = round_up(used, kTile), dp = round_up(d, kTile), tiles = kp / kTile;
  // K^T tile-major (tiles x head_dim x kTile) and V (kp x dp), zero-padded; the query block (kBlock x
  // head_dim), its scores (kBlock x kp) and output (kBlock x dp).
  thread_local Scratch scratch;
  const int64_t kt_size = tiles * d * kTile, vp_size = kp * dp, qb_size = kBlock * d, sc_size = kBlock * kp;
  float* const kt = scratch.get(kt_size + vp_size + qb_size + sc_size + kBlock * dp + 2 * kp);
  float* const vp = kt + kt_size;
  float* const qb = vp + vp_size;
  float* const sc = qb + qb_size;
  float* const ob = sc + sc_size;
  float* const fill = ob + kBlock * dp;
  int32_t* const real_key = reinterpret_cast<int32_t*>(fill + kp);
  std::memset(kt, 0, (kt_size + vp_size + qb_size) * sizeof(float));
  for (int64_t j = 0; j < used; ++j) {
    const float* kj = k + (b * s.keys + j) * row + h * d;
    float* tile = &kt[(j / kTile) * d * kTile + j % kTile];
    for (int64_t c = 0; c < d; ++c) tile[c * kTile] = kj[c];
    std::memcpy(&vp[j * dp], v + (b * s.keys + j) * row + h * d, d * sizeof(float));
  }
  // Per key: -1 (all bits, a vector select mask) for real keys, else 0 and the score it gets instead:
  // `masked` for the masked keys among the first `used`, -infinity for the padding up to kp (weight 0 even
  // in a row with no real key, whose `masked` scores all get weight 1).
  for (int64_t j = 0; j < kp; ++j) {
    real_key[j] = (j < used && keep_b[j]) ? -1 : 0;
    fill[j] = j < used ? masked : -std::numeric_limits<float>::infinity();
  }
  float inv_sum[kBlock];
  for (int64_t i0 = q0; i0 < q1; i0 += kBlock) {
    const int64_t rows = std::min<int64_t>(kBlock, q1 - i0);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(&qb[r * d], q + (b * s.queries + i0 + r) * row + h * d, d * sizeof(float));
    const int64_t groups = (rows + kRows - 1) / kRows;
    // Scores, scaled after the product.
    for (int64_t t = 0; t < tiles; ++t) {
      const float* kt_t = &kt[t * d * kTile];
      for (int64_t g = 0; g < groups; ++g) {
        const float* qg = &qb[g * kRows * d];
        Vec acc[kRows][kCols] = {};
        for (int64_t c = 0; c < d; ++c) {
          Vec kv[kCols];
          for (int u = 0; u < kCols; ++u) kv[u] = load(kt_t + c * kTile + u * kWidth);
          for (int r = 0; r < kRows; ++r) {
            const Vec qv = splat(qg[r * d + c]);
            for (int u = 0; u < kCols; ++u) acc[r][u] += qv * kv[u];
          }
        }
        float* sg = &sc[g * kRows * kp + t * kTile];
        IVec real_u[kCols];
        Vec fill_u[kCols];
        for (int u = 0; u < kCols; ++u) {
          std::memcpy(&real_u[u], &real_key[t * kTile + u * kWidth], sizeof(IVec));
          fill_u[u] = load(&fill[t * kTile + u * kWidth]);
        }
        for (int r = 0; r < kRows; ++r)
          for (int u = 0; u < kCols; ++u)
            store(sg + r * kp + u * kWidth, real_u[u] ? acc[r][u] * splat(scale) : fill_u[u]);
      }
    }
    // Softmax numerators in place (masked keys at `masked`, padding at -infinity: weight exactly 0).
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = &sc[r * kp];
      Vec top = splat(masked);
      for (int64_t j = 0; j < kp; j += kWidth) {
        const Vec x = load(sr + j);
        top = top > x ? top : x;
      }
      float row_max = masked;
      for (int i = 0; i < kWidth; ++i) row_max = std::max(row_max, top[i]);
      Vec sum = splat(0.0f);
      const Vec topv = splat(row_max);
      for (int64_t j = 0; j < kp; j += kWidth) {
        const Vec e = exp_nonpositive(load(sr + j) - topv);
        store(sr + j, e);
        sum += e;
      }
      float total = 0.0f;
      for (int i = 0; i < kWidth; ++i) total += sum[i];
      inv_sum[r] = 1.0f / total;
    }
    // Output (numerators x V), accumulated tile by tile of keys, then divided by the sums.
    std::memset(ob, 0, kBlock * dp * sizeof(float));
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t j0 = t * kTile, j1 = std::min<int64_t>(used, j0 + kTile);
      for (int64_t c = 0; c < dp; c += kTile) {
        for (int64_t g = 0; g < groups; ++g) {
          float* og = &ob[g * kRows * dp + c];
          const float* sg = &sc[g * kRows * kp];
          Vec acc[kRows][kCols];
          for (int r = 0; r < kRows; ++r)
            for (int u = 0; u < kCols; ++u) acc[r][u] = load(og + r * dp + u * kWidth);
          for (int64_t j = j0; j < j1; ++j) {
            const float* vj = &vp[j * dp + c];
            Vec vv[kCols];
            for (int u = 0; u < kCols; ++u) vv[u] = load(vj + u * kWidth);
            for (int r = 0; r < kRows; ++r) {
              const Vec pv = splat(sg[r * kp + j]);
              for (int u = 0; u < kCols; ++u) acc[r][u] += pv * vv[u];
            }
          }
          for (int r = 0; r < kRows; ++r)
            for (int u = 0; u < kCols; ++u) store(og + r * dp + u * kWidth, acc[r][u]);
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = out + (b * s.queries + i0 + r) * row + h * d;
      for (int64_t c = 0; c < d; ++c) dst[c] = ob[r * dp + c] * inv_sum[r];
    }
  }
}

// Runs items 0..total-1 on the caller and the pool's threads; returns when all are done. Threads that start
// late find no work and touch only the shared counters (kept alive by the shared_ptr).
template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t total, F fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, total, fn]() {
    for (;;) {
      const int64_t i = state->next.fetch_add(1);
      if (i >= total) return;
      fn(i);
      if (state->done.fetch_add(1) + 1 == total) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));  // a copy: Schedule takes F&&
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == total; });
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> query, ffi::Buffer<ffi::F32> key,
                     ffi::Buffer<ffi::F32> value, ffi::Buffer<ffi::PRED> keep, ffi::ResultBuffer<ffi::F32> out,
                     float scale) {
  const auto qd = query.dimensions(), kd = key.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || value.dimensions().size() != 4 || keep.dimensions().size() != 2)
    return ffi::Error::InvalidArgument("cpu attention: query/key/value (batch, L, heads, dim), keep (batch, L)");
  const Shape s{qd[0], qd[1], kd[1], qd[2], qd[3]};
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  // Query blocks: enough items to keep every thread busy (4 per thread), each at least 64 queries.
  const int64_t pairs = s.batch * s.heads;
  int64_t blocks = std::max<int64_t>(1, (4 * threads + pairs - 1) / pairs);
  blocks = std::min<int64_t>(blocks, std::max<int64_t>(1, s.queries / 64));
  const int64_t per_block = (s.queries + blocks - 1) / blocks;
  const float* q = query.typed_data();
  const float* k = key.typed_data();
  const float* v = value.typed_data();
  const bool* kp = keep.typed_data();
  float* o = out->typed_data();
  parallel_for(pool, pairs * blocks, [=](int64_t item) {
    const int64_t pair = item / blocks, block = item % blocks;
    const int64_t q0 = block * per_block, q1 = std::min(s.queries, q0 + per_block);
    if (q0 < q1) attend(s, q, k, v, kp, scale, o, pair / s.heads, pair % s.heads, q0, q1);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DnavecCpuAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
