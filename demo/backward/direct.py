"""Direct transposed 3x3 convolutions on channels-last rows: im2col over "shifted rows", and col2im.

Both compute the transposed convolution, padding 1, as BLAS GEMMs plus data movement, without Winograd's
transforms (``demo.backward.kernels`` picks the method per call):

- im2col, for small windows: the zero-padded frames of B rows, flattened to positions (B * (H + 2) * (W + 2),
  C_out); the input seen through kernel tap (j, i) at output position p is position p + j * (W + 2) + i, so each
  of the 9 taps is one contiguous slice of the positions. The 9 slices side by side are the column matrix, and
  one GEMM with the flipped kernel (9 * C_out, C_in) computes every output, in rows of W + 2 of which the last 2
  are discarded. In chunks of positions that stay in the cache.
- col2im, for few output channels (conv1_1's 3): one GEMM x (positions, C_out) @ W (C_out, 9 * C_in) gives each
  tap's contribution at the input positions, and 9 shifted adds of whole planes sum them (9 * C_in planes move,
  not 9 * C_out).
"""

from __future__ import annotations

import numpy as np

from demo.backward.threads import each, parts

CHUNK_BYTES = 8 << 20  # size of one chunk of im2col columns (stays in the L3 cache, keeps GEMMs large)


def im2col(buf: np.ndarray, matrix: np.ndarray, B: int, H: int, W: int) -> np.ndarray:
    """``buf`` (B * (H + 2) * (W + 2) + 2, C_out): B zero-padded planes, flattened -> (B, H, W, C_in) view.

    Output position p (of the flattened padded planes) sees tap (j, i) at input position p + j * (W + 2) + i: each
    tap is a contiguous slice of ``buf``'s rows; the 9 slices side by side are the column matrix, one GEMM with
    ``matrix`` (9 * C_out, C_in) per chunk of positions (the chunks on all threads, ``each``).
    """
    C_out, C_in = buf.shape[1], matrix.shape[1]
    Wp = W + 2
    P = (H + 2) * Wp  # one padded plane
    L = (B - 1) * P + H * Wp  # output positions up to the last plane's last row (2 discarded per row of W + 2)
    offsets = [j * Wp + i for j in range(3) for i in range(3)]  # tap (j, i) of the flipped kernel
    y = np.empty((B * P, C_in), dtype=np.float32)
    chunk = max(Wp, CHUNK_BYTES // (4 * 9 * C_out))

    def columns(k: int) -> None:
        n0 = k * chunk
        n = min(chunk, L - n0)
        cols = np.empty((n, 9, C_out), dtype=np.float32)
        for t, off in enumerate(offsets):
            cols[:, t] = buf[off + n0 : off + n0 + n]
        np.matmul(cols.reshape(n, 9 * C_out), matrix, out=y[n0 : n0 + n])

    each(columns, -(-L // chunk))
    return y.reshape(B, H + 2, Wp, C_in)[:, :H, :W]


def col2im(frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``frame`` (B, H, W, C_out) contiguous -> (B, H, W, C_in) view: per-tap GEMM, then 9 shifted adds.

    ``matrix`` (C_out, 9 * C_in) gives each tap's contribution at the input positions, ``taps`` (3, 3, C_in, B, H,
    W), channels first (C_in is small: whole planes add up); input (u, v) through tap (kh, kw) lands on output
    (u + kh - 1, v + kw - 1). The GEMMs and the sums go in parts of the rows (``each``).
    """
    B, H, W, C_out = frame.shape
    C_in = matrix.shape[1] // 9
    taps = np.empty((3, 3, C_in, B, H, W), dtype=np.float32)
    y = np.empty((C_in, B, H, W), dtype=np.float32)
    bands = [(b, u0, u1) for b in range(B) for u0, u1 in parts(H, H * W * C_out if B == 1 else 0)]

    def gemm(k: int) -> None:
        b, u0, u1 = bands[k]
        z = np.matmul(matrix.T, frame[b, u0:u1].reshape(-1, C_out).T)  # (9 * C_in, positions)
        taps[:, :, :, b, u0:u1] = z.reshape(3, 3, C_in, u1 - u0, W)

    def sums(k: int) -> None:
        b, p0, p1 = bands[k]
        out = y[:, b, p0:p1]
        out.fill(0.0)
        for kh in range(3):  # output p gets input u = p + 1 - kh
            u0, u1 = max(p0 + 1 - kh, 0), min(p1 + 1 - kh, H)
            for kw in range(3):
                q0, q1 = max(kw - 1, 0), min(W + kw - 1, W)  # output columns reached through tap kw
                src = taps[kh, kw, :, b, u0:u1, q0 + 1 - kw : q1 + 1 - kw]
                out[:, u0 + kh - 1 - p0 : u1 + kh - 1 - p0, q0:q1] += src

    each(gemm, len(bands))
    each(sums, len(bands))
    return y.transpose(1, 2, 3, 0)
