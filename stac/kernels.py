"""Fused CPU loops for the bit-plane neurons, built with the system C compiler on first use.

At decode sizes (one token, 576-1536 neurons per encoder) the neuron loop and the closed form are not
arithmetic but kernel dispatch: the TorchScript loops in ``stac.neurons`` / ``stac.coding`` issue 6-7 tensor
ops per timestep, about 200 us per encoder for T=10. The loops below do the same float32 arithmetic, in
the same order, in one pass over memory (a few microseconds), the way SpikingJelly fuses its neurons'
multi-step path into one CUDA kernel on GPUs.

Same arithmetic means bit-identical results, which the tests check against the TorchScript path:
the source is compiled without ``-ffast-math`` and with ``-ffp-contract=off`` (no fused multiply-adds),
and every operation is the float32 operation torch performs (IEEE division, floor, compare, subtract).

The kernels are optional. ``available()`` is False when there is no C compiler, when the build fails,
or when ``STAC_KERNELS=0``; callers then use the TorchScript path, which computes the same values.
The shared library is cached under ``$STAC_CACHE`` (default ``~/.cache/stac``), keyed by a hash of the source.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* BitPlaneCoding.closed_form: levels = round-half-up(clamp(x / unit, -m, m)); scaled = levels * unit. */
void stac_bitplane_levels(const float *x, const float *unit, int64_t n, int64_t d, float m,
                          float *levels, float *scaled) {
    for (int64_t i = 0; i < n; ++i) {
        float un = unit[i % d];
        float u = x[i] / un;
        u = u < -m ? -m : (u > m ? m : u);
        float f = floorf(u);
        float lv = f + ((u - f) >= 0.5f ? 1.0f : 0.0f);
        levels[i] = lv;
        scaled[i] = lv * un;
    }
}

/* neurons.bitplane_spike_count: spikes a BitPlaneNode emits for each integer level (exact integer
   arithmetic). k[t] = ceil(c * w[t]): fire +1 if r >= k, -1 if r <= -k; r -= s * w. */
void stac_bitplane_spike_count(const float *levels, int64_t n, int64_t steps, const int64_t *w,
                               const int64_t *k, int64_t *count) {
    for (int64_t i = 0; i < n; ++i) {
        float lv = levels[i];
        int64_t r = lv == lv ? (int64_t)lv : INT64_MIN;  /* NaN: what torch's .to(int64) gives on x86 */
        int64_t c = 0;
        for (int64_t t = 0; t < steps; ++t) {
            int64_t s = (r >= k[t]) - (r <= -k[t]);
            r -= s * w[t];
            c += s < 0 ? -s : s;
        }
        count[i] = c;
    }
}

/* BitPlaneNode.run_pulse: the spike train [T, n] and final membrane [n] for input u [n] injected at t=0.
   Per step: S = (V >= th) - (V < -th); V = V - S * w. */
void stac_bitplane_run(const float *u, int64_t n, int64_t steps, const float *w, const float *th,
                       float *train, float *v_out) {
    for (int64_t i = 0; i < n; ++i) {
        float v = u[i];
        for (int64_t t = 0; t < steps; ++t) {
            float s = (v >= th[t] ? 1.0f : 0.0f) - (v < -th[t] ? 1.0f : 0.0f);
            float sw = s * w[t];
            v = v - sw;
            train[t * n + i] = s;
        }
        v_out[i] = v;
    }
}

/* Event-driven synapses of the time-stepped engine. Every spike s = train[t, j, i] != 0 is one event that
   adds its synapses' weights, wt[i, :] (the weight matrix as [in, out]), times s * unit[i] * step_w[t],
   to the output of token j: y[j, :] = sum over events. That is sum_t w_t * W (s_t * unit), the dense
   time-stepped product, computed with one multiply-add per spike and synapse (the synaptic operations the
   energy meter counts) instead of one per input and synapse at every step. Outputs are processed in
   tiles of 64, each tile's weights read once for all tokens; tiles run in parallel (OpenMP). */
#define STAC_TILE 64
#define STAC_CHUNK 64
typedef struct { int32_t i; float c; } stac_event;

static void stac_tile_plain(const stac_event *ev, int64_t ne, const float *wt, int64_t out, int64_t o0,
                            int64_t len, float *y) {
    float acc[STAC_TILE];
    for (int64_t k = 0; k < len; ++k) acc[k] = 0.0f;
    for (int64_t e = 0; e < ne; ++e) {
        const float *row = wt + (int64_t)ev[e].i * out + o0;
        float c = ev[e].c;
        for (int64_t k = 0; k < len; ++k) acc[k] += c * row[k];
    }
    for (int64_t k = 0; k < len; ++k) y[k] = acc[k];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define STAC_AVX2 1
__attribute__((target("avx2,fma")))
static void stac_tile_avx2(const stac_event *ev, int64_t ne, const float *wt, int64_t out, int64_t o0, float *y) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t e = 0; e < ne; ++e) {
        const float *r = wt + (int64_t)ev[e].i * out + o0;
        __m256 c = _mm256_set1_ps(ev[e].c);
        a0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(r), a0);
        a1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(r + 8), a1);
        a2 = _mm256_fmadd_ps(c, _mm256_loadu_ps(r + 16), a2);
        a3 = _mm256_fmadd_ps(c, _mm256_loadu_ps(r + 24), a3);
        a4 = _mm256_fmadd_ps(c, _mm256_loadu_ps(r + 32), a4);
        a5 = _mm256_fmadd_ps(c, _mm256_loadu_ps(r + 40), a5);
        a6 = _mm256_fmadd_ps(c, _mm256_loadu_ps(r + 48), a6);
        a7 = _mm256_fmadd_ps(c, _mm256_loadu_ps(r + 56), a7);
    }
    _mm256_storeu_ps(y, a0); _mm256_storeu_ps(y + 8, a1); _mm256_storeu_ps(y + 16, a2);
    _mm256_storeu_ps(y + 24, a3); _mm256_storeu_ps(y + 32, a4); _mm256_storeu_ps(y + 40, a5);
    _mm256_storeu_ps(y + 48, a6); _mm256_storeu_ps(y + 56, a7);
}
#endif

/* Whether this CPU runs the AVX2 + FMA paths (0 where they are not compiled in). */
static int stac_avx2(void) {
#ifdef STAC_AVX2
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* Gathers each token's events in time order (tokens in parallel), then accumulates them tile by tile.
   Returns the number of events, i.e. spikes, or -1 when out of memory. */
int64_t stac_spike_synapse(const float *train, int64_t steps, int64_t n, int64_t in, const float *unit,
                           const float *step_w, const float *wt, int64_t out, float *y) {
    /* Tokens in chunks, so the event buffer stays bounded (8 bytes per input and step per token of a chunk)
       however long the prompt. */
    int64_t chunk = n < STAC_CHUNK ? n : STAC_CHUNK;
    stac_event *ev = (stac_event *)malloc(sizeof(stac_event) * (size_t)(steps * in * chunk + 1));
    int64_t *count = (int64_t *)malloc(sizeof(int64_t) * (size_t)(chunk + 1));
    if (ev == NULL || count == NULL) { free(ev); free(count); return -1; }
    int avx2 = stac_avx2();
    int64_t total = 0;
    int64_t tiles = (out + STAC_TILE - 1) / STAC_TILE;
    for (int64_t j0 = 0; j0 < n; j0 += chunk) {
        int64_t m = n - j0 < chunk ? n - j0 : chunk;
        #pragma omp parallel for schedule(static) reduction(+:total) if (m > 1)
        for (int64_t j = 0; j < m; ++j) {
            stac_event *e = ev + j * steps * in;
            int64_t c = 0;
            for (int64_t t = 0; t < steps; ++t) {
                const float *s = train + (t * n + j0 + j) * in;
                for (int64_t i = 0; i < in; ++i)
                    if (s[i] != 0.0f) { e[c].i = (int32_t)i; e[c].c = (s[i] * unit[i]) * step_w[t]; ++c; }
            }
            count[j] = c;
            total += c;
        }
        #pragma omp parallel for schedule(static)
        for (int64_t tl = 0; tl < tiles; ++tl) {
            int64_t o0 = tl * STAC_TILE, len = out - o0 < STAC_TILE ? out - o0 : STAC_TILE;
            for (int64_t j = 0; j < m; ++j) {
                float *yj = y + (j0 + j) * out + o0;
#ifdef STAC_AVX2
                if (avx2 && len == STAC_TILE) {
                    stac_tile_avx2(ev + j * steps * in, count[j], wt, out, o0, yj);
                    continue;
                }
#endif
                stac_tile_plain(ev + j * steps * in, count[j], wt, out, o0, len, yj);
            }
        }
    }
    (void)avx2;
    free(ev);
    free(count);
    return total;
}

/* Selected outputs of a linear layer, for the early-stopping lm_head (stac.readout): y[p, k] = sum_j x[p, j]
   * w[rows[k], j] for p < P, k < K, with w [out, in] row-major. Each named row of w is read in place, once for
   all P positions (a gather would copy it first). The sum runs in 16 lanes (two AVX2 registers of fused
   multiply-adds, or 16 plain accumulators), added up in a fixed order, then the tail. */
#ifdef STAC_AVX2
__attribute__((target("avx2,fma")))
static float stac_dot_avx2(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), s1);
    }
    float lane[16];
    _mm256_storeu_ps(lane, s0); _mm256_storeu_ps(lane + 8, s1);
    float s = 0.0f;
    for (int q = 0; q < 16; ++q) s += lane[q];
    for (; j < n; ++j) s += a[j] * b[j];
    return s;
}
#endif

static float stac_dot_plain(const float *a, const float *b, int64_t n) {
    float lane[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int q = 0; q < 16; ++q) lane[q] += a[j + q] * b[j + q];
    float s = 0.0f;
    for (int q = 0; q < 16; ++q) s += lane[q];
    for (; j < n; ++j) s += a[j] * b[j];
    return s;
}

static float stac_dot(const float *a, const float *b, int64_t n, int avx2) {
#ifdef STAC_AVX2
    if (avx2) return stac_dot_avx2(a, b, n);
#endif
    (void)avx2;
    return stac_dot_plain(a, b, n);
}

void stac_rows_linear(const float *x, int64_t P, int64_t in, const float *w, const int64_t *rows, int64_t K,
                      float *y) {
    int avx2 = stac_avx2();
    #pragma omp parallel for schedule(static) if (K * P * in > 65536)
    for (int64_t k = 0; k < K; ++k) {
        const float *row = w + rows[k] * in;
        for (int64_t p = 0; p < P; ++p) y[p * K + k] = stac_dot(x + p * in, row, in, avx2);
    }
}

/* Spike-coded attention in closed form at decode sizes (stac.attention), the two products around the
   softmax weights' encoder. Layouts: q [b, n, H*D] (the query code's levels * unit), keys and values
   [b, KV, C, D], mask [b, n, C] additive or NULL, heads h use key/value head h / (H / KV).
   stac_attn_weights: w[b, h, i, c] = exp(s_c - max_c s) with s_c = (q . k_c) * scaling + mask[c].
   stac_attn_values:  out[b, i, h, :] = (sum_c p[c] v_c) / (sum_c p[c]), norm[b, h, i] = sum_c p[c],
   p the softmax weights' code (levels * unit); a row whose code is all zero gives 0 / 0 as torch does. */

void stac_attn_weights(const float *q, const float *k, const float *mask, int64_t B, int64_t H, int64_t KV,
                       int64_t N, int64_t C, int64_t D, float scaling, float *w) {
    int avx2 = stac_avx2();
    int64_t group = H / KV;
    #pragma omp parallel for collapse(2) schedule(static) if (B * H * N * C * D > 65536)
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < N; ++i) {
                const float *qi = q + (b * N + i) * H * D + h * D;
                const float *kh = k + (b * KV + h / group) * C * D;
                const float *mi = mask ? mask + (b * N + i) * C : NULL;
                float *row = w + ((b * H + h) * N + i) * C;
                float top = -INFINITY;
                for (int64_t c = 0; c < C; ++c) {
                    float s = stac_dot(qi, kh + c * D, D, avx2) * scaling;
                    if (mi) s = s + mi[c];
                    row[c] = s;
                    if (s > top) top = s;
                }
                for (int64_t c = 0; c < C; ++c) row[c] = expf(row[c] - top);
            }
}

void stac_attn_values(const float *p, const float *v, int64_t B, int64_t H, int64_t KV, int64_t N, int64_t C,
                      int64_t D, float *out, float *norm) {
    int64_t group = H / KV;
    #pragma omp parallel for collapse(2) schedule(static) if (B * H * N * C * D > 65536)
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < N; ++i) {
                const float *row = p + ((b * H + h) * N + i) * C;
                const float *vh = v + (b * KV + h / group) * C * D;
                float *o = out + ((b * N + i) * H + h) * D;
                float acc[512];
                float total = 0.0f;
                for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
                for (int64_t c = 0; c < C; ++c) {
                    float pc = row[c];
                    if (pc == 0.0f) continue;  /* no spike: no synaptic event */
                    total += pc;
                    const float *vc = vh + c * D;
                    for (int64_t d = 0; d < D; ++d) acc[d] += pc * vc[d];
                }
                for (int64_t d = 0; d < D; ++d) o[d] = acc[d] / total;
                norm[(b * H + h) * N + i] = total;
            }
}
"""

_FLAGS = ["-O2", "-shared", "-fPIC", "-std=c99", "-ffp-contract=off", "-fno-fast-math"]
_OPENMP = ["-fopenmp"]
_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None


def _cache_dir() -> Path:
    return Path(os.environ.get("STAC_CACHE", Path.home() / ".cache" / "stac"))


def _compile(compiler: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernels.c"
        src.write_text(_SOURCE)
        built = Path(tmp) / "kernels.so"
        subprocess.run([compiler, *flags, str(src), "-o", str(built), "-lm"], check=True,
                       capture_output=True, timeout=120)
        os.replace(built, target)  # atomic: concurrent first uses never load a half-written file


def _build() -> ctypes.CDLL:
    # With OpenMP where the compiler has it (the synapse tiles then use torch's own OpenMP threads: the
    # runtime torch loaded is the one this library links), and without it otherwise (one thread).
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    for flags in (_FLAGS + _OPENMP, _FLAGS):
        key = hashlib.sha256((_SOURCE + " ".join(flags)).encode()).hexdigest()[:16]
        target = _cache_dir() / f"kernels-{key}.so"
        if not target.exists():
            if compiler is None:
                raise RuntimeError("no C compiler found (set CC)")
            try:
                _compile(compiler, flags, target)
            except subprocess.CalledProcessError:
                if flags is _FLAGS:
                    raise
                continue
        break
    lib = ctypes.CDLL(str(target))
    f, i64, fp = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p
    lib.stac_bitplane_levels.argtypes = [fp, fp, i64, i64, f, fp, fp]
    lib.stac_bitplane_levels.restype = None
    lib.stac_bitplane_run.argtypes = [fp, i64, i64, fp, fp, fp, fp]
    lib.stac_bitplane_run.restype = None
    lib.stac_bitplane_spike_count.argtypes = [fp, i64, i64, fp, fp, fp]
    lib.stac_bitplane_spike_count.restype = None
    lib.stac_spike_synapse.argtypes = [fp, i64, i64, i64, fp, fp, fp, i64, fp]
    lib.stac_spike_synapse.restype = i64
    lib.stac_rows_linear.argtypes = [fp, i64, i64, fp, fp, i64, fp]
    lib.stac_rows_linear.restype = None
    lib.stac_attn_weights.argtypes = [fp, fp, fp, i64, i64, i64, i64, i64, i64, f, fp]
    lib.stac_attn_weights.restype = None
    lib.stac_attn_values.argtypes = [fp, fp, i64, i64, i64, i64, i64, i64, fp, fp]
    lib.stac_attn_values.restype = None
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _tried, _error
    if not _tried:
        _tried = True
        if os.environ.get("STAC_KERNELS", "1") != "0":
            try:
                _lib = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _error = f"{type(e).__name__}: {e}"
    return _lib


def _check_cpu(*tensors: torch.Tensor) -> None:
    # A raw pointer into a meta or GPU tensor would crash the process, not raise.
    for t in tensors:
        if t.device.type != "cpu":
            raise ValueError(f"stac.kernels needs CPU tensors, got one on {t.device}")


def _loaded() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError(f"STAC's compiled kernels are unavailable: {_error or 'disabled by STAC_KERNELS=0'}")
    return lib


def available() -> bool:
    """Whether the compiled kernels can be used in this process."""
    return _library() is not None


def unavailable_reason() -> str | None:
    """Why ``available()`` is False (None when it is True or was never asked)."""
    return _error if _tried and _lib is None else None


def applies(x: torch.Tensor) -> bool:
    """Whether the kernels can take ``x``: float32 on the CPU, eager (not traced/compiled), no autograd."""
    return (
        x.dtype is torch.float32
        and x.device.type == "cpu"
        and not (x.requires_grad and torch.is_grad_enabled())
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and (_lib is not None or (not _tried and available()))
    )


def bitplane_levels(x: torch.Tensor, unit: torch.Tensor, max_level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, levels * unit) for ``x`` [..., d] and ``unit`` [d]; the values of ``coding._bitplane_levels``."""
    x = x.contiguous()
    unit = unit.to(torch.float32).contiguous()
    _check_cpu(x, unit)
    levels = torch.empty_like(x)
    scaled = torch.empty_like(x)
    _loaded().stac_bitplane_levels(x.data_ptr(), unit.data_ptr(), x.numel(), unit.numel(), max_level,
                              levels.data_ptr(), scaled.data_ptr())
    return levels, scaled


def bitplane_run(u: torch.Tensor, weights: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(spike train [T, *u.shape], final membrane) of a BitPlaneNode fed ``u`` at t=0.

    ``weights`` and ``thresholds`` are the node's float32 [T] step weights and thresholds.
    """
    u = u.contiguous()
    _check_cpu(u, weights, thresholds)
    steps = weights.numel()
    train = torch.empty((steps, *u.shape), dtype=torch.float32)
    v = torch.empty_like(u)
    _loaded().stac_bitplane_run(u.data_ptr(), u.numel(), steps, weights.data_ptr(), thresholds.data_ptr(),
                           train.data_ptr(), v.data_ptr())
    return train, v


def bitplane_spike_count(levels: torch.Tensor, weights: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Spikes per neuron (int64, shape of ``levels``) for float32 integer ``levels``; ``weights`` and ``k``
    are the int64 [T] step weights and integer firing thresholds ceil(c * w)."""
    levels = levels.contiguous()
    _check_cpu(levels, weights, k)
    count = torch.empty(levels.shape, dtype=torch.int64)
    _loaded().stac_bitplane_spike_count(levels.data_ptr(), levels.numel(), weights.numel(), weights.data_ptr(),
                                        k.data_ptr(), count.data_ptr())
    return count


def spike_synapse(train: torch.Tensor, unit: torch.Tensor, step_weights: torch.Tensor,
                  weight_t: torch.Tensor) -> torch.Tensor:
    """sum_t step_weights[t] * (train[t] * unit) @ weight_t, event by event (see the C source).

    ``train`` [T, ..., in] spikes (float32, mostly zeros), ``unit`` [in], ``step_weights`` [T] and
    ``weight_t`` [in, out], the synapses' weights with inputs as rows. Returns [..., out], no bias.
    """
    train = train.contiguous()
    unit = unit.to(torch.float32).contiguous()
    step_weights = step_weights.to(torch.float32).contiguous()
    weight_t = weight_t.contiguous()
    _check_cpu(train, unit, step_weights, weight_t)
    steps, inputs, outputs = train.shape[0], train.shape[-1], weight_t.shape[1]
    if weight_t.dtype is not torch.float32 or weight_t.shape[0] != inputs or unit.numel() != inputs:
        raise ValueError(f"spike_synapse: train [..., {inputs}], unit {tuple(unit.shape)} and float32 "
                         f"weights [{inputs}, out] expected, got {weight_t.dtype} {tuple(weight_t.shape)}")
    tokens = train[0].numel() // max(inputs, 1)
    y = torch.empty((*train.shape[1:-1], outputs), dtype=torch.float32)
    events = _loaded().stac_spike_synapse(train.data_ptr(), steps, tokens, inputs, unit.data_ptr(),
                                          step_weights.data_ptr(), weight_t.data_ptr(), outputs, y.data_ptr())
    if events < 0:
        raise MemoryError(f"spike_synapse: no memory for the events of {tokens} tokens x {steps} steps")
    return y


def rows_linear(x: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight[rows])`` without copying the rows: x [..., in], weight [out, in] float32,
    ``rows`` [K] int64 indices into its outputs. Returns [..., K] (the same sums, added in another order)."""
    x = x.contiguous()
    weight = weight.contiguous()
    rows = rows.to(torch.int64).contiguous()
    _check_cpu(x, weight, rows)
    inputs = weight.shape[1]
    if weight.dtype is not torch.float32 or x.dtype is not torch.float32 or weight.dim() != 2 or x.shape[-1] != inputs:
        raise ValueError(f"rows_linear: x [..., {inputs}] and float32 weight [out, {inputs}] expected, "
                         f"got {x.dtype} {tuple(x.shape)} and {weight.dtype} {tuple(weight.shape)}")
    if rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < weight.shape[0]:
        raise IndexError(f"rows_linear: row indices must lie in [0, {weight.shape[0]})")
    positions = x.numel() // max(inputs, 1)
    y = torch.empty((*x.shape[:-1], rows.numel()), dtype=torch.float32)
    _loaded().stac_rows_linear(x.data_ptr(), positions, inputs, weight.data_ptr(), rows.data_ptr(), rows.numel(),
                               y.data_ptr())
    return y


# Longest head the attention kernels take (their per-row accumulator).
ATTENTION_MAX_HEAD_DIM = 512


def attention_weights(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, heads: int,
                      scaling: float) -> torch.Tensor:
    """exp(s - max s) per row of the scores s = (q . k) * scaling + mask, for ``query`` [b, n, heads * d]
    (the queries' code), ``key`` [b, kv_heads, context, d] and an additive ``mask`` [b or 1, 1, n, context]
    (or None). Returns [b, heads, n, context]: what ``stac.attention`` computes with matmuls, summed in
    another order."""
    batch, new = query.shape[0], query.shape[1]
    kv_heads, context, head_dim = key.shape[1], key.shape[2], key.shape[3]
    query, key = query.contiguous(), key.contiguous()
    if mask is not None:  # one mask for every head: [b or 1, 1, n, context]
        mask = mask.expand(batch, 1, new, context)[:, 0].to(torch.float32).contiguous()
        _check_cpu(mask)
    _check_cpu(query, key)
    if (query.dtype is not torch.float32 or key.dtype is not torch.float32 or key.shape[0] != batch
            or query.shape[-1] != heads * head_dim or heads % kv_heads or head_dim > ATTENTION_MAX_HEAD_DIM):
        raise ValueError(f"attention_weights: float32 queries [b, n, {heads} x {head_dim}] and keys [b, kv, context, "
                         f"{head_dim}] with kv dividing heads expected, got {query.dtype} {tuple(query.shape)} and "
                         f"{key.dtype} {tuple(key.shape)}")
    w = torch.empty((batch, heads, new, context), dtype=torch.float32)
    _loaded().stac_attn_weights(query.data_ptr(), key.data_ptr(), 0 if mask is None else mask.data_ptr(), batch,
                                heads, kv_heads, new, context, head_dim, float(scaling), w.data_ptr())
    return w


def attention_values(weights: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_c p_c v_c / sum_c p_c as [b, n, heads, d], the normaliser sum_c p_c as [b, heads, n]) for the
    softmax weights' code ``weights`` [b, heads, n, context] and ``value`` [b, kv_heads, context, d]."""
    batch, heads, new, context = weights.shape
    kv_heads, head_dim = value.shape[1], value.shape[3]
    weights, value = weights.contiguous(), value.contiguous()
    _check_cpu(weights, value)
    if (weights.dtype is not torch.float32 or value.dtype is not torch.float32 or value.shape[0] != batch
            or value.shape[2] != context or heads % kv_heads or head_dim > ATTENTION_MAX_HEAD_DIM):
        raise ValueError(f"attention_values: float32 weights [b, heads, n, {context}] and values [b, kv, {context}, d] "
                         f"with kv dividing heads expected, got {weights.dtype} {tuple(weights.shape)} and "
                         f"{value.dtype} {tuple(value.shape)}")
    out = torch.empty((batch, new, heads, head_dim), dtype=torch.float32)
    norm = torch.empty((batch, heads, new), dtype=torch.float32)
    _loaded().stac_attn_values(weights.data_ptr(), value.data_ptr(), batch, heads, kv_heads, new, context,
                               head_dim, out.data_ptr(), norm.data_ptr())
    return out, norm
