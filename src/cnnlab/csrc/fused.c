/* Two blocks of cnnlab's network as single kernels for CPU training (see cnnlab/fused.py for why).
 *
 * 1. conv1: conv 32@3×3 (one input channel, stride 1, padding 1) + bias → 2×2/2 max-pool → ReLU,
 *    for 28×28 inputs; forward, the gradient of the weights and bias, and that of the input.
 *
 *    Nothing of the 28×28×32 convolution output is stored: each pooled position computes its
 *    four candidates in registers and keeps the largest and which one won, by max_pool2d's rule
 *    (a strictly larger value, or a NaN, takes over; ties go to the first). The backward passes
 *    route each channel's gradient through its winner's 3×3 input patch: to the weights and
 *    bias, and (for attacks, which need it) to the input.
 *    Layouts: x is B×28×28 fp32 (one channel); wt is 9×32 fp32 (tap-major); the output, its
 *    gradient and the winners are B×14×14×32 (channels last), the output and its gradient bf16
 *    or fp32.
 *
 * 2. pool2: conv2's output (B×14×14×32, channels last) → 2×2/2 max-pool → ReLU → flattened in
 *    fc1's order (B×32×7×7), and its gradient back, written whole (zeros included) in one pass:
 *    no zero-filled buffer, no int64 indices, no separate ReLU or layout copy. Max and ReLU only
 *    pick values, so outputs and gradients are bit for bit those of torch's operators.
 * Written with GCC/Clang vector extensions, so the compiler picks the instructions. */
#include <stdint.h>
#include <string.h>

#define C 32   /* output channels: two vectors of 16 */
#define H 28   /* input height and width */
#define P 14   /* pooled height and width */
#define HP 30  /* padded input */
#define Q 7    /* pool2's output height and width */

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint8_t vb __attribute__((vector_size(16)));

static inline vf loadf(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf select(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

static inline vh to_bf16(vf f) {                      /* round to nearest even; NaN → 0x7fc0 as torch */
    vu u = (vu)f;
    vi nan = (vi)((u & 0x7fffffffu) > 0x7f800000u);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    u = (vu)(((vi)u & ~nan) | (0x7fc0 & nan));
    return __builtin_convertvector(u, vh);
}

static inline vf from_bf16(const uint16_t *p) {
    vh h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}

static inline vf gather16(vf table, vi idx) {        /* table[idx[l]] for each lane l */
#if defined(__clang__)
    vf r;
    for (int l = 0; l < 16; l++) r[l] = table[idx[l] & 15];
    return r;
#else
    return __builtin_shuffle(table, idx);
#endif
}

static void pad_image(const float *x, float *xp) {
    memset(xp, 0, sizeof(float) * HP * HP);
    for (int r = 0; r < H; r++) memcpy(xp + (r + 1) * HP + 1, x + r * H, sizeof(float) * H);
}

/* 16 values at offset o of a bf16 or fp32 array, as fp32; and back (rounded to nearest even). */
static inline vf load_any(const void *base, size_t o, int bf16) {
    return bf16 ? from_bf16((const uint16_t *)base + o) : loadf((const float *)base + o);
}

static inline void store_any(void *base, size_t o, vf v, int bf16) {
    if (bf16) {
        vh h = to_bf16(v);
        memcpy((uint16_t *)base + o, &h, sizeof h);
    } else {
        memcpy((float *)base + o, &v, sizeof v);
    }
}

/* One thread's share of a call: images b0..b1-1. Each kernel reads the fields it needs. */
typedef struct {
    const float *x, *wt, *bias;   /* conv1: x B×28×28; wt 9×32 (tap-major); bias 32 */
    const void *y;                /* pool2: conv2's output, B×14×14×32 (channels last) */
    void *out;                    /* conv1: B×14×14×32 (channels last); pool2: B×32×7×7 (fc1's order) */
    uint8_t *arg;                 /* which of the four candidates won, channels last (or NULL) */
    const void *gout;             /* backward: gradient of out, same layout and type */
    float *partial;               /* conv1 backward: this thread's 9×32 weight and 32 bias gradients */
    float *gx;                    /* conv1 input gradient: B×28×28 */
    void *gy;                     /* pool2 backward: gradient of y, B×14×14×32 */
    int bf16, b0, b1;
} job_t;

static void forward_range(const job_t *j) {
    float xp[HP * HP];
    vf w[9][2], bias[2];
    for (int k = 0; k < 9; k++) { w[k][0] = loadf(j->wt + k * C); w[k][1] = loadf(j->wt + k * C + 16); }
    bias[0] = loadf(j->bias); bias[1] = loadf(j->bias + 16);
    for (int b = j->b0; b < j->b1; b++) {
        pad_image(j->x + (size_t)b * H * H, xp);
        for (int i = 0; i < P; i++)
            for (int q = 0; q < P; q++) {
                vf m[2];
                vi a[2];
#pragma GCC unroll 4
                for (int d = 0; d < 4; d++) {
                    const float *src = xp + (2 * i + (d >> 1)) * HP + 2 * q + (d & 1);
                    vf acc[2] = {w[0][0] * src[0], w[0][1] * src[0]};
#pragma GCC unroll 8
                    for (int k = 1; k < 9; k++) {
                        const float v = src[(k / 3) * HP + k % 3];
                        acc[0] += w[k][0] * v;
                        acc[1] += w[k][1] * v;
                    }
                    for (int h = 0; h < 2; h++) {
                        acc[h] += bias[h];
                        if (d == 0) {
                            m[h] = acc[h];
                            a[h] = (vi){0};
                        } else {
                            vi take = (acc[h] > m[h]) | (acc[h] != acc[h]);
                            m[h] = select(take, acc[h], m[h]);
                            a[h] = (a[h] & ~take) | (d & take);
                        }
                    }
                }
                const size_t o = (((size_t)b * P + i) * P + q) * C;
                for (int h = 0; h < 2; h++) {
                    store_any(j->out, o + 16 * h, select(m[h] < 0.0f, (vf){0}, m[h]), j->bf16);  /* ReLU; NaN stays NaN */
                    if (j->arg) { vb v = __builtin_convertvector(a[h], vb); memcpy(j->arg + o + 16 * h, &v, sizeof v); }
                }
            }
    }
}

/* 16 channels of the output's gradient at offset o, zero where the output is <= 0 (ReLU's backward). */
static inline vf relu_grad(const job_t *j, size_t o) {
    return select(load_any(j->out, o, j->bf16) <= 0.0f, (vf){0}, load_any(j->gout, o, j->bf16));
}

static void backward_range(const job_t *j) {
    float xp[HP * HP];
    vf dw[9][2], db[2] = {{0}, {0}};
    memset(dw, 0, sizeof dw);
    for (int b = j->b0; b < j->b1; b++) {
        pad_image(j->x + (size_t)b * H * H, xp);
        for (int i = 0; i < P; i++)
            for (int q = 0; q < P; q++) {
                const size_t o = (((size_t)b * P + i) * P + q) * C;
                vf patch;                                 /* the 4×4 input patch under this position */
                for (int u = 0; u < 4; u++) memcpy((float *)&patch + 4 * u, xp + (2 * i + u) * HP + 2 * q, 16);
                for (int h = 0; h < 2; h++) {
                    vf g = relu_grad(j, o + 16 * h);
                    vb ab;
                    memcpy(&ab, j->arg + o + 16 * h, sizeof ab);
                    vi a = __builtin_convertvector(ab, vi);
                    vi base = (a >> 1) * 4 + (a & 1);                  /* the winner's corner in the patch */
                    db[h] += g;
#pragma GCC unroll 9
                    for (int k = 0; k < 9; k++) dw[k][h] += g * gather16(patch, base + ((k / 3) * 4 + k % 3));
                }
            }
    }
    for (int k = 0; k < 9; k++) { memcpy(j->partial + k * C, &dw[k][0], 64); memcpy(j->partial + k * C + 16, &dw[k][1], 64); }
    memcpy(j->partial + 9 * C, &db[0], 64);
    memcpy(j->partial + 9 * C + 16, &db[1], 64);
}

static void pool_forward_range(const job_t *j) {
    float img[Q * Q][C];                  /* one image's pooled output, channels last */
    for (int b = j->b0; b < j->b1; b++) {
        for (int i = 0; i < Q; i++)
            for (int q = 0; q < Q; q++)
                for (int h = 0; h < 2; h++) {
                    vf m = {0};
                    vi a = {0};
                    for (int d = 0; d < 4; d++) {
                        const size_t o = (((size_t)b * P + 2 * i + (d >> 1)) * P + 2 * q + (d & 1)) * C + 16 * h;
                        vf v = load_any(j->y, o, j->bf16);
                        if (d == 0) { m = v; continue; }
                        vi take = (v > m) | (v != v);
                        m = select(take, v, m);
                        a = (a & ~take) | (d & take);
                    }
                    m = select(m < 0.0f, (vf){0}, m);                 /* ReLU; NaN stays NaN */
                    memcpy(&img[i * Q + q][16 * h], &m, sizeof m);
                    if (j->arg) {
                        vb v = __builtin_convertvector(a, vb);
                        memcpy(j->arg + (((size_t)b * Q + i) * Q + q) * C + 16 * h, &v, sizeof v);
                    }
                }
        for (int c = 0; c < C; c++)                                  /* to fc1's order: c, i, q */
            for (int p = 0; p < Q * Q; p++) {
                const size_t o = ((size_t)b * C + c) * Q * Q + p;
                if (j->bf16) {                /* exact: every value came from a bf16 */
                    uint32_t u;
                    memcpy(&u, &img[p][c], 4);
                    ((uint16_t *)j->out)[o] = (uint16_t)(u >> 16);
                } else {
                    ((float *)j->out)[o] = img[p][c];
                }
            }
    }
}

static void pool_backward_range(const job_t *j) {
    float g[Q * Q][C], kept[Q * Q][C];
    for (int b = j->b0; b < j->b1; b++) {
        for (int c = 0; c < C; c++)                                  /* from fc1's order */
            for (int p = 0; p < Q * Q; p++) {
                const size_t o = ((size_t)b * C + c) * Q * Q + p;
                if (j->bf16) {
                    uint32_t u = (uint32_t)((const uint16_t *)j->gout)[o] << 16, w = (uint32_t)((const uint16_t *)j->out)[o] << 16;
                    memcpy(&g[p][c], &u, 4);
                    memcpy(&kept[p][c], &w, 4);
                } else {
                    g[p][c] = ((const float *)j->gout)[o];
                    kept[p][c] = ((const float *)j->out)[o];
                }
            }
        for (int i = 0; i < Q; i++)
            for (int q = 0; q < Q; q++)
                for (int h = 0; h < 2; h++) {
                    vf gv = loadf(&g[i * Q + q][16 * h]), out = loadf(&kept[i * Q + q][16 * h]);
                    gv = select(out <= 0.0f, (vf){0}, gv);            /* ReLU's backward */
                    vb ab;
                    memcpy(&ab, j->arg + (((size_t)b * Q + i) * Q + q) * C + 16 * h, sizeof ab);
                    vi a = __builtin_convertvector(ab, vi);
                    for (int d = 0; d < 4; d++) {     /* the four candidates tile the map: each written once */
                        const size_t o = (((size_t)b * P + 2 * i + (d >> 1)) * P + 2 * q + (d & 1)) * C + 16 * h;
                        store_any(j->gy, o, select(a == d, gv, (vf){0}), j->bf16);
                    }
                }
    }
}

/* The input's gradient: each channel's gradient flows back through its winner's 3×3 taps. Per
 * pooled position the 4×4 input patch under it gets sum_c g[c] · (weights of c placed at the
 * winner's corner): one 16-lane multiply-add per channel with a precomputed column. */
static void input_grad_range(const job_t *j) {
    float cols[4][C][16];                               /* [winner][channel][patch pixel] */
    memset(cols, 0, sizeof cols);
    for (int d = 0; d < 4; d++)
        for (int c = 0; c < C; c++)
            for (int k = 0; k < 9; k++) cols[d][c][((d >> 1) + k / 3) * 4 + (d & 1) + k % 3] = j->wt[k * C + c];
    float gxp[HP * HP];
    for (int b = j->b0; b < j->b1; b++) {
        memset(gxp, 0, sizeof gxp);
        for (int i = 0; i < P; i++)
            for (int q = 0; q < P; q++) {
                const size_t o = (((size_t)b * P + i) * P + q) * C;
                vf patch = {0};
                for (int h = 0; h < 2; h++) {
                    vf g = relu_grad(j, o + 16 * h);
                    const uint8_t *a = j->arg + o + 16 * h;
                    for (int l = 0; l < 16; l++) patch += g[l] * loadf(cols[a[l] & 3][16 * h + l]);
                }
                for (int u = 0; u < 4; u++)
                    for (int v = 0; v < 4; v++) gxp[(2 * i + u) * HP + 2 * q + v] += patch[u * 4 + v];
            }
        for (int r = 0; r < H; r++) memcpy(j->gx + (size_t)b * H * H + r * H, gxp + (r + 1) * HP + 1, sizeof(float) * H);
    }
}

/* Splits the batch into one range per thread. Built with -fopenmp, the OpenMP runtime is the one
 * already loaded in the process (PyTorch's own libgomp, found by its soname), so the kernel runs on
 * the threads PyTorch's operators run on instead of competing with them for the cores (threads of
 * its own, created per call, made the whole step no faster). Built without, the ranges run in turn. */
static int parallel(job_t base, int batch, int threads, void (*fn)(const job_t *), float *partial) {
    if (threads > batch) threads = batch;
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        job_t job = base;
        job.b0 = (int)((long)batch * t / threads);
        job.b1 = (int)((long)batch * (t + 1) / threads);
        job.partial = partial ? partial + (size_t)t * 10 * C : NULL;
        fn(&job);
    }
    return threads;
}

int cnnlab_conv1pool_forward(const float *x, const float *wt, const float *bias, void *out, uint8_t *arg,
                             int bf16, int batch, int threads) {
    job_t base = {.x = x, .wt = wt, .bias = bias, .out = out, .arg = arg, .bf16 = bf16};
    parallel(base, batch, threads, forward_range, NULL);
    return 0;
}

/* grad: the 9×32 weight gradient (tap-major), then the 32 bias gradient; scratch: threads × 320 floats. */
int cnnlab_conv1pool_backward(const float *x, const void *out, const uint8_t *arg, const void *gout, int bf16,
                              int batch, int threads, float *scratch, float *grad) {
    job_t base = {.x = x, .out = (void *)out, .arg = (uint8_t *)arg, .gout = gout, .bf16 = bf16};
    int n = parallel(base, batch, threads, backward_range, scratch);
    for (int e = 0; e < 10 * C; e++) {
        float s = 0.0f;
        for (int t = 0; t < n; t++) s += scratch[(size_t)t * 10 * C + e];
        grad[e] = s;
    }
    return n;
}

/* gx: the B×28×28 gradient of the input x. */
int cnnlab_conv1pool_backward_input(const float *wt, const void *out, const uint8_t *arg, const void *gout, int bf16,
                                    int batch, int threads, float *gx) {
    job_t base = {.wt = wt, .out = (void *)out, .arg = (uint8_t *)arg, .gout = gout, .gx = gx, .bf16 = bf16};
    parallel(base, batch, threads, input_grad_range, NULL);
    return 0;
}

int cnnlab_pool2_forward(const void *y, void *out, uint8_t *arg, int bf16, int batch, int threads) {
    job_t base = {.y = y, .out = out, .arg = arg, .bf16 = bf16};
    parallel(base, batch, threads, pool_forward_range, NULL);
    return 0;
}

int cnnlab_pool2_backward(const void *out, const uint8_t *arg, const void *gout, void *gy, int bf16, int batch,
                          int threads) {
    job_t base = {.out = (void *)out, .arg = (uint8_t *)arg, .gout = gout, .gy = gy, .bf16 = bf16};
    parallel(base, batch, threads, pool_backward_range, NULL);
    return 0;
}
