/*
 * Fused elementwise kernels for CPU training of the µSplit LadderVAE (musplit.native).
 *
 * Eager PyTorch runs BatchNorm-apply, ELU, the gate and their gradients as separate passes
 * over 32-128 MB activations, and its ELU evaluates expm1 with a slow, very accurate routine.
 * Each function here does one such chain in a single pass over memory, with an expm1 that is
 * accurate to a few float32 ulp and vectorises (AVX2/AVX-512 with -march=native).
 *
 * Tensors are float32 and either channels_last (rows = pixels, a row holds the C channels)
 * or NCHW (rows = (sample, channel) planes, a row holds the pixels of one channel). `cl`
 * says which. Rows are split between `nt` OpenMP threads; the OpenMP runtime is the one
 * PyTorch already loaded (same soname), so the thread pool is shared, not doubled.
 *
 * No Python or PyTorch headers: the loader in __init__.py calls these through ctypes with the
 * tensors' data pointers, so compiling takes a second and needs only a C compiler.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MUSPLIT_KERNELS_VERSION 2

int musplit_kernels_version(void) { return MUSPLIT_KERNELS_VERSION; }

/* exp(x) - 1 and exp(x) for float32, x in any range (clamped to where results are finite).
 *
 * x = k ln2 + r with |r| <= ln2/2 (two-constant Cody-Waite reduction), then with
 * q = expm1(r) = r + r^2 P(r), P the degree-5 minimax polynomial of Cephes' expf:
 * expm1(x) = 2^k q + (2^k - 1) and exp(x) = 2^k (1 + q). Below -87.3 the results are -1 and
 * 2^-126 up to rounding, above 88.3 the clamp keeps 2^k finite. Written branch-free so that
 * the loops around it vectorise; a NaN input stays NaN. */
static inline void exp_parts(float x, float *two_k, float *q) {
    const float hi = 88.3762626647949f, lo = -87.3365447504f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    const float k = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    *q = p * (r * r) + r;
    int32_t bits = ((int32_t)k + 127) << 23;
    memcpy(two_k, &bits, sizeof *two_k);
}

static inline float expm1_f(float x) {
    float two_k, q;
    exp_parts(x, &two_k, &q);
    const float out = two_k * q + (two_k - 1.0f);
    return x != x ? x : out;
}

static inline float exp_f(float x) {
    float two_k, q;
    exp_parts(x, &two_k, &q);
    const float out = two_k * (1.0f + q);
    return x != x ? x : out;
}

static inline float elu_f(float z) { return z > 0.0f ? z : expm1_f(z); }

/* ---- BatchNorm (training statistics already computed) -> ELU ------------------------- */

/* out = ELU(x * scale[c] + shift[c]); out may be x. */
void musplit_bn_elu_fwd(const float *x, float *out, const float *scale, const float *shift,
                        int64_t rows, int64_t len, int64_t channels, int cl, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * len;
        float *o = out + r * len;
        if (cl) {
#pragma omp simd
            for (int64_t j = 0; j < len; j++) o[j] = elu_f(xr[j] * scale[j] + shift[j]);
        } else {
            const int64_t c = r % channels;
            const float s = scale[c], t = shift[c];
#pragma omp simd
            for (int64_t j = 0; j < len; j++) o[j] = elu_f(xr[j] * s + t);
        }
    }
}

/* Backward through ELU, then the per-channel sums BatchNorm's backward needs.
 *
 * a = ELU(z) (recomputed by musplit_bn_elu_fwd), g holds dL/da on entry and dL/dz on exit:
 * ELU'(z) = 1 where a > 0 and a + 1 elsewhere. With xc = x - mean[c]:
 *   sum_g[c] = sum dL/dz,  sum_gx[c] = sum dL/dz * xc      (double precision, per thread).
 * Returns 0, or -1 if the per-thread sums could not be allocated (nothing is written then). */
int musplit_elu_bwd_bn_sums(const float *a, float *g, const float *x, const float *mean,
                             double *sum_g, double *sum_gx, int64_t rows, int64_t len,
                             int64_t channels, int cl, int nt) {
    if (nt < 1) nt = 1;
    double *part = calloc((size_t)(2 * nt * channels), sizeof(double));
    if (!part) return -1;
    int used = 1;
#pragma omp parallel num_threads(nt)
    {
        int tid = 0, n = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        n = omp_get_num_threads();
#endif
#pragma omp single
        used = n;
        double *ps = part + (int64_t)tid * 2 * channels, *px = ps + channels;
        const int64_t per = (rows + n - 1) / n;
        const int64_t r0 = tid * per, r1 = r0 + per < rows ? r0 + per : rows;
        for (int64_t r = r0; r < r1; r++) {
            const float *ar = a + r * len, *xr = x + r * len;
            float *gr = g + r * len;
            if (cl) {
#pragma omp simd
                for (int64_t j = 0; j < len; j++) {
                    const float gz = ar[j] > 0.0f ? gr[j] : gr[j] * (ar[j] + 1.0f);
                    gr[j] = gz;
                    ps[j] += (double)gz;
                    px[j] += (double)gz * (double)(xr[j] - mean[j]);
                }
            } else {
                const int64_t c = r % channels;
                const float m = mean[c];
                double s = 0.0, sx = 0.0;
#pragma omp simd reduction(+ : s, sx)
                for (int64_t j = 0; j < len; j++) {
                    const float gz = ar[j] > 0.0f ? gr[j] : gr[j] * (ar[j] + 1.0f);
                    gr[j] = gz;
                    s += (double)gz;
                    sx += (double)gz * (double)(xr[j] - m);
                }
                ps[c] += s;
                px[c] += sx;
            }
        }
    }
    for (int t = 0; t < used; t++) {
        const double *ps = part + (int64_t)t * 2 * channels, *px = ps + channels;
        for (int64_t c = 0; c < channels; c++) {
            sum_g[c] += ps[c];
            sum_gx[c] += px[c];
        }
    }
    free(part);
    return 0;
}

/* BatchNorm's input gradient from dL/dz: gx = A[c] gz + B[c] (x - mean[c]) + D[c].
 * gx may be gz (in place). */
void musplit_bn_bwd_apply(const float *gz, const float *x, float *gx, const float *A,
                          const float *B, const float *D, const float *mean, int64_t rows,
                          int64_t len, int64_t channels, int cl, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *gr = gz + r * len, *xr = x + r * len;
        float *o = gx + r * len;
        if (cl) {
#pragma omp simd
            for (int64_t j = 0; j < len; j++)
                o[j] = A[j] * gr[j] + B[j] * (xr[j] - mean[j]) + D[j];
        } else {
            const int64_t c = r % channels;
            const float a = A[c], b = B[c], d = D[c], m = mean[c];
#pragma omp simd
            for (int64_t j = 0; j < len; j++) o[j] = a * gr[j] + b * (xr[j] - m) + d;
        }
    }
}

/* ---- Gate: ELU(a) * sigmoid(g) for y = [a, g] along channels --------------------------
 * channels_last: y rows are pixels of 2C values [a_0..a_C-1, g_0..g_C-1], out rows C values.
 * NCHW: y is (N, 2C, S); rows of out are the N*C planes of S pixels. `half` is C. */

void musplit_gate_fwd(const float *y, float *out, int64_t rows, int64_t len, int64_t half,
                      int cl, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *ya, *yg;
        if (cl) {
            ya = y + r * 2 * len;
            yg = ya + len;
        } else {
            const int64_t n = r / half, c = r % half;
            ya = y + (n * 2 * half + c) * len;
            yg = ya + half * len;
        }
        float *o = out + r * len;
#pragma omp simd
        for (int64_t j = 0; j < len; j++) o[j] = elu_f(ya[j]) / (1.0f + exp_f(-yg[j]));
    }
}

/* gy = d/dy of the gate given go = dL/d(out): with e = ELU(a), s = sigmoid(g),
 * d/da = go s ELU'(a) (ELU' = 1 above 0, e + 1 below) and d/dg = go e s (1 - s). */
void musplit_gate_bwd(const float *y, const float *go, float *gy, int64_t rows, int64_t len,
                      int64_t half, int cl, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int64_t off_a, off_g;
        if (cl) {
            off_a = r * 2 * len;
            off_g = off_a + len;
        } else {
            const int64_t n = r / half, c = r % half;
            off_a = (n * 2 * half + c) * len;
            off_g = off_a + half * len;
        }
        const float *ya = y + off_a, *yg = y + off_g, *g = go + r * len;
        float *ga = gy + off_a, *gg = gy + off_g;
#pragma omp simd
        for (int64_t j = 0; j < len; j++) {
            const float a = ya[j];
            const float t = exp_f(-yg[j]);  /* s = 1 / (1 + t), 1 - s = t s without cancelling */
            const float e = elu_f(a), s = 1.0f / (1.0f + t);
            const float gs = g[j] * s;
            ga[j] = a > 0.0f ? gs : gs * (e + 1.0f);
            gg[j] = gs * e * (t * s);
        }
    }
}
