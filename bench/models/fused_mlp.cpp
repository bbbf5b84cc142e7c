// One training of the `mlp` recipe (one ReLU hidden layer, logistic or softmax output, Adam, L2,
// early stopping on the epoch loss) in one call, for the CPU. See bench/models/fused.py, which
// compiles this file, packs the parameters and calls `train_mlp` once per job.
//
// Why a kernel of its own: for a 49-input, 10-unit network the batched torch trainer spends most
// of a step dispatching small kernels and streaming every job's activations through memory. Here
// one job's parameters, Adam moments and activations (tens of KB) stay in L1 and L2 for its whole
// training, the minibatch rows are read straight from the pool (no gather copy), and the pool's
// columns are split (see Pool) so that one-hot columns cost nothing where they are zero.
//
// Vectors are GCC vector extensions of 16 floats, so the same source compiles to AVX-512, AVX2 or
// SSE. Lanes run over hidden units (the hidden layer) and over classes (a softmax output).
// Reductions across lanes use a fixed pairwise order, so results do not depend on the ISA.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int L = 16;
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

inline v16 splat(float x) { return v16{} + x; }
inline v16 load(const float *p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float *p, v16 v) { std::memcpy(p, &v, sizeof v); }

// Lanes exchanged in pairs at distance 8, 4, 2 and 1: the steps of a reduction across lanes.
// __builtin_shufflevector is clang's and GCC's (12+); older GCCs have __builtin_shuffle.
#if defined(__clang__) || __GNUC__ >= 12
#define PERMUTE(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define PERMUTE(v, ...) __builtin_shuffle(v, v16i{__VA_ARGS__})
#endif
inline v16 swap8(v16 v) { return PERMUTE(v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7); }
inline v16 swap4(v16 v) { return PERMUTE(v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11); }
inline v16 swap2(v16 v) { return PERMUTE(v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13); }
inline v16 swap1(v16 v) { return PERMUTE(v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14); }
#undef PERMUTE

inline float hsum(v16 v) {
    v += swap8(v);
    v += swap4(v);
    v += swap2(v);
    v += swap1(v);
    return v[0];
}

inline v16 vmax(v16 a, v16 b) { return a > b ? a : b; }

inline float hmax(v16 v) {
    v = vmax(v, swap8(v));
    v = vmax(v, swap4(v));
    v = vmax(v, swap2(v));
    v = vmax(v, swap1(v));
    return v[0];
}

// exp and log of float vectors (Cephes' polynomials, about 1 ulp). exp's argument is clamped to
// [-87.3, 88.7], which keeps 2^n a normal number; the callers only need exp to saturate there.
inline v16 vexp(v16 x) {
    x = x < 88.7f ? x : splat(88.7f);
    x = x > -87.3f ? x : splat(-87.3f);
    // Adding 1.5 * 2^23 rounds to an integer n, whose two's complement then sits in the low bits.
    const v16 t = x * 1.44269504088896341f + 12582912.0f;
    const v16 n = t - 12582912.0f;
    v16 r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v16 p = splat(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * (r * r) + r + 1.0f;
    v16i bits = ((v16i)t - 0x4b400000 + 127) << 23;
    return p * (v16)bits;
}

// log for positive normal floats.
inline v16 vlog(v16 x) {
    v16i ix = (v16i)x;
    v16 e = (v16)(((ix >> 23) & 0xff) + 0x4b400000 - 126) - 12582912.0f;  // int to float
    v16 m = (v16)((ix & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
    auto small = m < 0.707106781186547524f;
    e = small ? e - 1.0f : e;
    m = small ? m + m - 1.0f : m - 1.0f;
    v16 z = m * m;
    v16 y = splat(7.0376836292E-2f);
    y = y * m - 1.1514610310E-1f;
    y = y * m + 1.1676998740E-1f;
    y = y * m - 1.2420140846E-1f;
    y = y * m + 1.4249322787E-1f;
    y = y * m - 1.6668057665E-1f;
    y = y * m + 2.0000714765E-1f;
    y = y * m - 2.4999993993E-1f;
    y = y * m + 3.3333331174E-1f;
    y = y * m * z;
    y += e * -2.12194440e-4f;
    y -= z * 0.5f;
    return m + y + e * 0.693359375f;
}

// numpy's PCG64 (XSL-RR 128/64) and Generator.permutation, reproduced so that a job draws the
// same minibatch orders as the torch trainer from the same numpy Generator.
struct Pcg64 {
    unsigned __int128 state, inc;
    bool has32;
    uint32_t u32;

    // The state as six words {state_hi, state_lo, inc_hi, inc_lo, has_uint32, uinteger}.
    static Pcg64 from_words(const uint64_t *w) {
        return Pcg64{((unsigned __int128)w[0] << 64) | w[1], ((unsigned __int128)w[2] << 64) | w[3],
                     w[4] != 0, (uint32_t)w[5]};
    }
    void to_words(uint64_t *w) const {
        w[0] = (uint64_t)(state >> 64);
        w[1] = (uint64_t)state;
        w[4] = has32;
        w[5] = u32;
    }

    uint64_t next64() {
        const unsigned __int128 mult =
            ((unsigned __int128)0x2360ed051fc65da4ULL << 64) | 0x4385df649fccf645ULL;
        state = state * mult + inc;
        uint64_t x = (uint64_t)(state >> 64) ^ (uint64_t)state;
        unsigned rot = (unsigned)(state >> 122);
        return (x >> rot) | (x << ((-rot) & 63));
    }
    uint32_t next32() {
        if (has32) {
            has32 = false;
            return u32;
        }
        uint64_t n = next64();
        has32 = true;
        u32 = (uint32_t)(n >> 32);
        return (uint32_t)n;
    }
    // A uniform integer in [0, max] by masked rejection, as numpy's random_interval.
    uint64_t interval(uint64_t max) {
        if (max == 0) return 0;
        uint64_t mask = max;
        for (int s = 1; s < 64; s *= 2) mask |= mask >> s;
        uint64_t v;
        if (max <= 0xffffffffULL) {
            while ((v = (next32() & mask)) > max) {}
        } else {
            while ((v = (next64() & mask)) > max) {}
        }
        return v;
    }
    void permutation(int32_t *a, int64_t n) {
        for (int64_t i = 0; i < n; ++i) a[i] = (int32_t)i;
        for (int64_t i = n - 1; i >= 1; --i) {
            int64_t j = (int64_t)interval((uint64_t)i);
            int32_t t = a[j];
            a[j] = a[i];
            a[i] = t;
        }
    }
};

// The pool's columns in two parts. Dense columns (non-zero in many rows) are a row-major block
// `dense` (n, dense_stride), zero-padded to a multiple of 8 columns, whose column j is input
// `dense_cols[j]`; they are processed with register-blocked loops (no per-entry index, no
// read-modify-write of gradient rows). The other columns are CSR rows with zeros left out, which
// cost nothing where an input is zero (Adult's rarer one-hot columns).
struct Pool {
    const float *dense;
    const int32_t *dense_cols;
    int32_t n_dense, dense_stride;
    const int64_t *indptr;
    const int32_t *indices;
    const float *values;
};

struct Visits {  // one job's visits: pool row, loss weight, label (the sign for one logistic output)
    const int32_t *rows;
    const float *weight;
    const float *label;
    int64_t n;
};

struct Recipe {
    double lr, alpha, tol;
    int32_t n_iter_no_change, max_epochs, batch_size;
};

// HV: vectors of hidden units (hidden width <= 16 * HV). SOFTMAX: C <= 16 classes, else one
// logistic output. Parameters (floats, padding lanes zero and kept zero by the gradients):
// W1 (d, 16 HV) | b1 (16 HV) | W2 (16 HV, CO) | b2 (CO), with CO = 16 for softmax, 1 otherwise.
template <int HV, bool SOFTMAX>
int train(const Pool &pool, int32_t d, int32_t C, const Visits &vis, const Recipe &rc,
          float *theta, Pcg64 &rng, double *losses) {
    constexpr int HP = L * HV, CO = SOFTMAX ? L : 1;
    constexpr int FB = 4;                     // examples per block of the dense forward pass
    constexpr int KB = HV == 1 ? 8 : HV == 2 ? 4 : 2;  // dense gradient rows per block (divides 8)
    const int64_t oB1 = (int64_t)d * HP, oW2 = oB1 + HP, oB2 = oW2 + HP * CO, P = oB2 + CO;
    const int64_t n = vis.n;
    const int B = (int)(n < rc.batch_size ? n : rc.batch_size);
    const int BP = (B + L - 1) / L * L;
    const int64_t S = (n + B - 1) / B;

    std::vector<float> m1(P), m2(P), grad(P), wmask(P, 0.0f), W2T(SOFTMAX ? L * HP : 0);
    std::fill(wmask.begin(), wmask.begin() + oB1, 1.0f);
    std::fill(wmask.begin() + oW2, wmask.begin() + oB2, 1.0f);
    std::vector<float> A((size_t)(B + FB) * HP), dA((size_t)B * HP), out((size_t)BP * CO), delta((size_t)BP * CO);
    std::vector<float> scale(BP), label(BP), lse(SOFTMAX ? BP : 0), zy(SOFTMAX ? BP : 0);
    std::vector<int32_t> perm(n), row(B);
    const v16i valid = v16i{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} < C;
    // Adam's betas in double for the bias correction, and the moment weights 1 - beta rounded to
    // float from double, as the torch trainer and scikit-learn compute them.
    const double beta1 = 0.9, beta2 = 0.999;
    const float move1 = (float)(1.0 - beta1), move2 = (float)(1.0 - beta2);
    double b1t = 1.0, b2t = 1.0, best = INFINITY;
    int stale = 0, epoch = 0;

    while (epoch < rc.max_epochs) {
        rng.permutation(perm.data(), n);
        double epoch_loss = 0.0;
        for (int64_t s = 0; s < S; ++s) {
            const int64_t pos = s * B;
            const int nb = (int)(n - pos < B ? n - pos : B);
            for (int i = 0; i < BP; ++i) {
                if (i < nb) {
                    int32_t v = perm[pos + i];
                    row[i] = vis.rows[v];
                    scale[i] = vis.weight[v] / (float)nb;
                    label[i] = vis.label[v];
                } else {
                    scale[i] = 0.0f;
                    label[i] = SOFTMAX ? 0.0f : 1.0f;
                }
            }
            const float *W1 = theta, *b1 = theta + oB1, *W2 = theta + oW2, *b2 = theta + oB2;
            if (SOFTMAX)
                for (int c = 0; c < L; ++c)
                    for (int j = 0; j < HP; ++j) W2T[c * HP + j] = W2[j * L + c];

            // Forward: hidden activations, then the output's logits. The dense columns are
            // taken for FB examples at once, so that each weight row loaded serves FB of them;
            // their pre-activations go through A, which keeps the accumulators in registers.
            std::fill(out.begin(), out.end(), 0.0f);
            for (int i0 = 0; i0 < nb; i0 += FB) {
                v16 acc[FB][HV];
                const float *x[FB];
                for (int e = 0; e < FB; ++e) {
                    x[e] = pool.dense + (int64_t)row[i0 + e < nb ? i0 + e : i0] * pool.dense_stride;
                    for (int h = 0; h < HV; ++h) acc[e][h] = load(b1 + L * h);
                }
                for (int k = 0; k < pool.n_dense; ++k) {
                    const float *w = W1 + (int64_t)pool.dense_cols[k] * HP;
                    for (int h = 0; h < HV; ++h) {
                        const v16 wv = load(w + L * h);
                        for (int e = 0; e < FB; ++e) acc[e][h] += x[e][k] * wv;
                    }
                }
                for (int e = 0; e < FB; ++e)
                    for (int h = 0; h < HV; ++h) store(&A[(size_t)(i0 + e) * HP + L * h], acc[e][h]);
            }
            for (int i = 0; i < nb; ++i) {
                float *a = &A[(size_t)i * HP];
                v16 acc[HV];
                for (int h = 0; h < HV; ++h) acc[h] = load(a + L * h);
                for (int64_t q = pool.indptr[row[i]]; q < pool.indptr[row[i] + 1]; ++q) {
                    const float f = pool.values[q];
                    const float *w = W1 + (int64_t)pool.indices[q] * HP;
                    for (int h = 0; h < HV; ++h) acc[h] += f * load(w + L * h);
                }
                for (int h = 0; h < HV; ++h) store(a + L * h, acc[h] > 0 ? acc[h] : v16{});
                if (SOFTMAX) {
                    v16 z = load(b2);
                    for (int j = 0; j < HP; ++j) z += a[j] * load(W2 + j * L);
                    store(&out[(size_t)i * L], z);
                } else {
                    v16 z{};
                    for (int h = 0; h < HV; ++h) z += load(a + L * h) * load(W2 + L * h);
                    out[i] = hsum(z) + b2[0];
                }
            }

            // Loss and the output's delta (dLoss/dlogit, weighted by scale).
            v16 loss{};
            if (SOFTMAX) {
                for (int i = 0; i < nb; ++i) {
                    v16 z = valid ? load(&out[(size_t)i * L]) : splat(-INFINITY);
                    const float mx = hmax(z);
                    v16 e = vexp(z - mx);
                    e = valid ? e : v16{};
                    const float sum = hsum(e);
                    const int y = (int)label[i];
                    lse[i] = sum;
                    zy[i] = z[y] - mx;
                    v16 p = e / sum;
                    p[y] -= 1.0f;
                    store(&delta[(size_t)i * L], p * scale[i]);
                }
                for (int i = nb; i < BP; ++i) lse[i] = 1.0f, zy[i] = 0.0f;
                for (int i = 0; i < BP; i += L)
                    loss += load(&scale[i]) * (vlog(load(&lse[i])) - load(&zy[i]));
            } else {
                // With s = 2y - 1 and q = sigmoid(s z): CE = -log q, dCE/dz = s (q - 1); q is
                // floored at 1e-30 as in the torch trainer.
                for (int i = 0; i < BP; i += L) {
                    v16 sgn = load(&label[i]), sc = load(&scale[i]);
                    v16 q = 1.0f / (1.0f + vexp(-(sgn * load(&out[i]))));
                    loss += sc * -vlog(q > 1e-30f ? q : splat(1e-30f));
                    store(&delta[i], (q - 1.0f) * sgn * sc);
                }
            }
            epoch_loss += (double)hsum(loss) * nb;

            // Backward: output layer, then the hidden layer's rows that the minibatch touches.
            std::fill(grad.begin(), grad.end(), 0.0f);
            float *gW1 = grad.data(), *gb1 = gW1 + oB1, *gW2 = gW1 + oW2, *gb2 = gW1 + oB2;
            v16 db1[HV], dW2[SOFTMAX ? 1 : HV], db2 = v16{};
            for (int h = 0; h < HV; ++h) db1[h] = v16{};
            if (!SOFTMAX)
                for (int h = 0; h < HV; ++h) dW2[h] = v16{};
            for (int i = 0; i < nb; ++i) {
                const float *a = &A[(size_t)i * HP];
                v16 da[HV];
                if (SOFTMAX) {
                    const v16 dl = load(&delta[(size_t)i * L]);
                    db2 += dl;
                    for (int h = 0; h < HV; ++h) da[h] = v16{};
                    for (int c = 0; c < C; ++c)
                        for (int h = 0; h < HV; ++h) da[h] += dl[c] * load(&W2T[c * HP + L * h]);
                } else {
                    const float dl = delta[i];
                    db2[0] += dl;
                    for (int h = 0; h < HV; ++h) {
                        v16 ah = load(a + L * h);
                        dW2[h] += dl * ah;
                        da[h] = dl * load(W2 + L * h);
                    }
                }
                for (int h = 0; h < HV; ++h) {
                    da[h] = load(a + L * h) > 0 ? da[h] : v16{};
                    db1[h] += da[h];
                    store(&dA[(size_t)i * HP + L * h], da[h]);
                }
                for (int64_t q = pool.indptr[row[i]]; q < pool.indptr[row[i] + 1]; ++q) {
                    const float f = pool.values[q];
                    float *g = gW1 + (int64_t)pool.indices[q] * HP;
                    for (int h = 0; h < HV; ++h) store(g + L * h, load(g + L * h) + f * da[h]);
                }
            }
            // The dense columns' weight gradients, KB rows at a time held in registers over the
            // whole minibatch.
            for (int k0 = 0; k0 < pool.n_dense; k0 += KB) {
                v16 g[KB][HV];
                for (int j = 0; j < KB; ++j)
                    for (int h = 0; h < HV; ++h) g[j][h] = v16{};
                for (int i = 0; i < nb; ++i) {
                    const float *x = pool.dense + (int64_t)row[i] * pool.dense_stride + k0;
                    for (int h = 0; h < HV; ++h) {
                        const v16 d = load(&dA[(size_t)i * HP + L * h]);
                        for (int j = 0; j < KB; ++j) g[j][h] += x[j] * d;
                    }
                }
                for (int j = 0; j < KB; ++j)  // a constant trip count keeps g in registers
                    if (k0 + j < pool.n_dense)
                        for (int h = 0; h < HV; ++h)
                            store(gW1 + (int64_t)pool.dense_cols[k0 + j] * HP + L * h, g[j][h]);
            }
            for (int h = 0; h < HV; ++h) store(gb1 + L * h, db1[h]);
            if (SOFTMAX) {
                // dW2 = A^T delta, eight rows at a time held in registers over the minibatch
                // (updating a row per example chains every example's store to the next's load).
                for (int j0 = 0; j0 < HP; j0 += 8) {
                    v16 g[8];
                    for (int j = 0; j < 8; ++j) g[j] = v16{};
                    for (int i = 0; i < nb; ++i) {
                        const v16 dl = load(&delta[(size_t)i * L]);
                        const float *a = &A[(size_t)i * HP + j0];
                        for (int j = 0; j < 8; ++j) g[j] += a[j] * dl;
                    }
                    for (int j = 0; j < 8; ++j) store(gW2 + (j0 + j) * L, g[j]);
                }
                store(gb2, db2);
            } else {
                for (int h = 0; h < HV; ++h) store(gW2 + L * h, dW2[h]);
                gb2[0] = db2[0];
            }

            // L2 penalty and Adam, in place.
            const float decay = (float)(rc.alpha / nb);
            b1t *= beta1;
            b2t *= beta2;
            const float neg_lr = (float)(-rc.lr * std::sqrt(1.0 - b2t) / (1.0 - b1t));
            float sq = 0.0f;
            float *__restrict th = theta;
            float *__restrict g1 = m1.data(), *__restrict g2 = m2.data();
            const float *__restrict gr = grad.data(), *__restrict wm = wmask.data();
            for (int64_t p = 0; p < P; ++p) {
                const float w = th[p], g = gr[p] + decay * wm[p] * w;
                sq += wm[p] * w * w;
                g1[p] += (g - g1[p]) * move1;
                g2[p] += (g * g - g2[p]) * move2;
                th[p] = w + (g1[p] * neg_lr) / (std::sqrt(g2[p]) + 1e-8f);
            }
            epoch_loss += 0.5 * rc.alpha * sq;
        }
        const double mean = epoch_loss / (double)n;
        losses[epoch] = mean;
        ++epoch;
        stale = mean > best - rc.tol ? stale + 1 : 0;
        if (mean < best) best = mean;
        if (stale > rc.n_iter_no_change) break;
    }
    return epoch;
}

}  // namespace

// Train one job in place on `theta` (layout above); returns the number of epochs run and writes
// each epoch's mean loss to `losses` (max_epochs,). rng_state: numpy's PCG64 state as six words
// (Pcg64::from_words), advanced in place. Returns -1 when
// no compiled variant fits (hidden width > 64, more than 16 classes), -2 when memory ran out.
extern "C" int train_mlp(const float *dense, const int32_t *dense_cols, int32_t n_dense,
                         int32_t dense_stride, const int64_t *indptr, const int32_t *indices,
                         const float *values, int32_t d, int32_t hidden, int32_t n_classes, const int32_t *rows,
                         const float *weight, const float *label, int64_t n_visits, double lr,
                         double alpha, double tol, int32_t n_iter_no_change, int32_t max_epochs,
                         int32_t batch_size, float *theta, uint64_t *rng_state, double *losses) {
    Pool pool{dense, dense_cols, n_dense, dense_stride, indptr, indices, values};
    Visits vis{rows, weight, label, n_visits};
    Recipe rc{lr, alpha, tol, n_iter_no_change, max_epochs, batch_size};
    Pcg64 rng = Pcg64::from_words(rng_state);
    const bool softmax = n_classes > 2;
    const int hv = (hidden + L - 1) / L;
    int epochs = -1;
    try {  // no C++ exception may cross into Python (std::bad_alloc would abort the process)
#define VARIANT(H)                                                                              \
    if (hv == H) epochs = softmax ? train<H, true>(pool, d, n_classes, vis, rc, theta, rng, losses) \
                                  : train<H, false>(pool, d, n_classes, vis, rc, theta, rng, losses);
        if (!softmax || n_classes <= L) {
            VARIANT(1) VARIANT(2) VARIANT(3) VARIANT(4)
        }
#undef VARIANT
    } catch (...) {
        return -2;
    }
    rng.to_words(rng_state);
    return epochs;
}

// The first n entries of numpy's Generator.permutation(n) from the given PCG64 state (for tests).
extern "C" void permutation(uint64_t *rng_state, int32_t *out, int64_t n) {
    Pcg64 rng = Pcg64::from_words(rng_state);
    rng.permutation(out, n);
    rng.to_words(rng_state);
}
