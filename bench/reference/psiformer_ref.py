#!/usr/bin/python3
"""psiformer_ref.py — an independent PyTorch (float64) Psiformer that cross-checks psiformer.h.

    /usr/bin/python3 bench/reference/psiformer_ref.py DIR [DIR ...]

Each DIR is written by bench/reference/export.c: parameter blocks <name>.npy, config.json, walker positions
x.npy and the C results c_*.npy. This file re-implements the wavefunction from its formulas only (von Glehn,
Spencer, Pfau, ICLR 2023; FermiNet envelope and simple e-e Jastrow), evaluates log|psi| and its sign, takes
grad log|psi| and the Laplacian (the 3N diagonal entries of the Hessian, one double-backward pass each) by
autograd, forms the local energy, and compares everything with the C numbers.

Agreement metric, per scalar (each walker's log|psi| and Laplacian; each gradient component):
    rel = |c - ref| / max(1, |ref|)
i.e. relative for values of magnitude above one and absolute below. For the local energy the scale also
includes the terms that are summed, since E_L = -1/2 lap - 1/2 |grad|^2 + V cancels catastrophically near a
node of psi (there lap ~ -|grad|^2 ~ -1/dist^2; seen: 6e7 - 6e7 + ... = 3e3):
    rel_E = |c - ref| / max(1, |E_L|, 1/2 |lap| + 1/2 |grad|^2 + |V|)
(the plain |c - ref| / max(1, |E_L|) is printed too, as eloc_plain, but not asserted). Tolerances: 1e-10 on
log|psi| (jet and forward pass) and E_L, 1e-8 on the gradient and the Laplacian; the sign must agree exactly.
Exit status: 0 when every directory passes, 1 otherwise.

The Pfaffian head (config "orbitals": "pfaffian"; Gao & Guennemann, NeurIPS 2024): per Pfaffian k, F enveloped
orbital features per electron M_k (N x F) and, for odd N, one more, the border orbital chi_k; the pair matrix
Phi_k = M_k (W_k - W_k^T) M_k^T, bordered as [[Phi_k, chi_k], [-chi_k^T, 0]] for odd N; psi = e^J sum_k Pf Phi_k.
Its Pfaffian is computed here by a Schur-complement elimination of its own (see logpfaffian), differentiable twice
by autograd; before any comparison the routine is checked against the sum over perfect matchings (2n <= 8),
against Pf^2 = det (up to 16 x 16), and its first and second autograd derivatives against 1/2 tr(A^-1 E) and
-1/2 tr(A^-1 E A^-1 E), so that a wrong reference Pfaffian cannot pass as agreement.
"""
import json
import math
import os
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

TOL = {"logpsi": 1e-10, "logpsi_fwd": 1e-10, "grad": 1e-8, "lap": 1e-8, "eloc": 1e-10}
LN_EPS = 1e-5


def logpfaffian(A):
    """log|Pf A| (differentiable) and sign(Pf A) (a Python int) of a real skew-symmetric n x n tensor, n even.

    Only the strict upper triangle of A is read. Elimination two rows at a time: with the leading 2 x 2 block
    [[0, a], [-a, 0]], u = A[0, 2:], v = A[1, 2:], the congruence that clears the first two rows and columns (it has
    determinant 1) leaves diag([[0, a], [-a, 0]], S) with the Schur complement S = A[2:, 2:] + (v u^T - u v^T) / a,
    so Pf A = a Pf S. Pivoting: before each step the largest |A[0, j]|, j >= 1, is moved to position 1 by swapping
    index 1 and j in rows and columns, which flips the sign of the Pfaffian. The pivot choice is made on detached
    values, so autograd differentiates the (locally constant) branch taken. An exactly zero pivot column gives
    (-inf, 0).
    """
    n = A.shape[0]
    assert A.shape == (n, n) and n % 2 == 0
    up = torch.triu(A, diagonal=1)
    A = up - up.transpose(0, 1)
    logabs = A.new_zeros(())
    sign = 1
    while A.shape[0] > 0:
        m = A.shape[0]
        row = A[0, 1:].detach().abs()
        j = int(torch.argmax(row).item()) + 1
        if row[j - 1].item() == 0.0:
            return A.new_tensor(-math.inf), 0
        if j != 1:
            idx = list(range(m))
            idx[1], idx[j] = j, 1
            idx = torch.tensor(idx)
            A = A[idx][:, idx]
            sign = -sign
        a = A[0, 1]
        logabs = logabs + torch.log(torch.abs(a))
        sign *= 1 if a.item() > 0 else -1
        if m == 2:
            break
        u, v = A[0, 2:], A[1, 2:]
        A = A[2:, 2:] + (torch.outer(v, u) - torch.outer(u, v)) / a
    return logabs, sign


def pfaffian_by_matchings(A):
    """Pf A as the signed sum over perfect matchings (expansion along the first row), for small n only."""
    n = A.shape[0]
    if n == 0:
        return 1.0
    total = 0.0
    for j in range(1, n):
        rest = [i for i in range(1, n) if i != j]
        total += (-1) ** (j - 1) * float(A[0, j]) * pfaffian_by_matchings(A[np.ix_(rest, rest)])
    return total


def self_test_logpfaffian():
    """The reference Pfaffian against two other routes; raises AssertionError on a disagreement."""
    g = np.random.default_rng(20261201)
    for n in (2, 4, 6, 8, 12, 16):
        for _ in range(20):
            B = g.standard_normal((n, n))
            A = B - B.T
            la, s = logpfaffian(torch.from_numpy(A))
            sd, ld = np.linalg.slogdet(A)
            assert sd > 0 and abs(2 * float(la) - ld) <= 1e-10 * max(1.0, abs(ld)), (n, float(la), ld)
            if n <= 8:
                pf = pfaffian_by_matchings(A)
                assert s == (1 if pf > 0 else -1) and abs(math.exp(float(la)) - abs(pf)) <= 1e-12 * max(1.0, abs(pf)), (n, pf)
    # Pf(J) = 1 for the symplectic unit, Pf(B A B^T) = det(B) Pf(A), and an exactly singular matrix
    J = np.kron(np.eye(4), np.array([[0.0, 1.0], [-1.0, 0.0]]))
    la, s = logpfaffian(torch.from_numpy(J))
    assert s == 1 and abs(float(la)) <= 1e-15
    B, C = g.standard_normal((8, 8)), g.standard_normal((8, 8))
    A = C - C.T
    la, s = logpfaffian(torch.from_numpy(A))
    lb, sb = logpfaffian(torch.from_numpy(B @ A @ B.T))
    sdet, ldet = np.linalg.slogdet(B)
    assert sb == s * int(sdet) and abs(float(lb) - float(la) - ldet) <= 1e-10
    # derivatives along a skew direction E, by autograd through the elimination (pivots included), against the
    # closed forms from Pf^2 = det: d/dt log|Pf(A + tE)| = 1/2 tr(A^-1 E), d^2/dt^2 = -1/2 tr(A^-1 E A^-1 E)
    for n in (2, 4, 6, 10):
        B, C = g.standard_normal((n, n)), g.standard_normal((n, n))
        A, E = B - B.T, C - C.T
        t = torch.zeros((), requires_grad=True)
        la, _ = logpfaffian(torch.from_numpy(A) + t * torch.from_numpy(E))
        (d1,) = torch.autograd.grad(la, t, create_graph=True)
        (d2,) = torch.autograd.grad(d1, t)
        Ai = np.linalg.inv(A)
        e1, e2 = 0.5 * np.trace(Ai @ E), -0.5 * np.trace(Ai @ E @ Ai @ E)
        assert abs(float(d1) - e1) <= 1e-10 * max(1.0, abs(e1)), (n, float(d1), e1)
        assert abs(float(d2) - e2) <= 1e-10 * max(1.0, abs(e2)), (n, float(d2), e2)
    Z = np.zeros((4, 4))
    Z[0, 1], Z[1, 0] = 2.0, -2.0
    la, s = logpfaffian(torch.from_numpy(Z))
    assert s == 0 and float(la) == -math.inf


class Psiformer:
    """The network with parameters read from an export directory."""

    def __init__(self, directory):
        with open(os.path.join(directory, "config.json")) as fh:
            self.cfg = json.load(fh)
        c = self.cfg
        self.n_up, self.n_down = c["n_up"], c["n_down"]
        self.N = self.n_up + self.n_down
        self.Z = float(c["Z"])
        self.R = torch.tensor([c["R"]], dtype=torch.float64)  # (atoms=1, 3)
        self.L, self.H, self.dh = c["layers"], c["heads"], c["head_dim"]
        self.K = c["dets"]
        self.pfaffian = c.get("orbitals", "det") == "pfaffian"
        self.F = c.get("pf_orbitals", 0)
        self.p = {}
        for b in c["blocks"]:
            arr = np.load(os.path.join(directory, b["name"] + ".npy"))
            arr = arr.reshape(b["rows"], b["cols"])
            self.p[b["name"]] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))

    # -- pieces of the network ------------------------------------------------------------------------
    def features(self, x):
        """x: (N, 3). Per nucleus [log(1+r), r_vec log(1+r)/r], then the spin (+1 up, -1 down)."""
        cols = []
        for I in range(self.R.shape[0]):
            d = x - self.R[I]  # (N, 3)
            r = torch.sqrt((d * d).sum(dim=1, keepdim=True))  # (N, 1)
            lg = torch.log(1.0 + r)
            cols.append(lg)
            cols.append(d * (lg / r))
        spin = torch.tensor([1.0] * self.n_up + [-1.0] * self.n_down).unsqueeze(1)
        cols.append(spin)
        return torch.cat(cols, dim=1)

    def layernorm(self, h, name):
        mean = h.mean(dim=1, keepdim=True)
        cen = h - mean
        var = (cen * cen).mean(dim=1, keepdim=True)  # population variance
        return cen / torch.sqrt(var + LN_EPS) * self.p[name + ".scale"][0] + self.p[name + ".offset"][0]

    def attention(self, h, l):
        N, H, dh = self.N, self.H, self.dh
        q = (h @ self.p["l%d.q.w" % l]).reshape(N, H, dh)
        k = (h @ self.p["l%d.k.w" % l]).reshape(N, H, dh)
        v = (h @ self.p["l%d.v.w" % l]).reshape(N, H, dh)
        logits = torch.einsum("ihc,jhc->hij", q, k) / math.sqrt(dh)
        weights = torch.softmax(logits, dim=2)  # normalised over the attended electron j
        mixed = torch.einsum("hij,jhc->ihc", weights, v).reshape(N, H * dh)
        return mixed @ self.p["l%d.o.w" % l]

    def mlp(self, h, l):
        u = torch.tanh(h @ self.p["l%d.mlp1.w" % l] + self.p["l%d.mlp1.b" % l][0])
        return torch.tanh(u @ self.p["l%d.mlp2.w" % l] + self.p["l%d.mlp2.b" % l][0])

    def orbitals(self, x, h):
        """Returns the K x N x N matrices phi^k_ij with envelopes."""
        N, K, nu = self.N, self.K, self.n_up
        parts, envs = [], []
        for s, (lo, hi, tag) in enumerate(((0, nu, "up"), (nu, N, "down"))):
            if hi <= lo:
                continue
            parts.append(h[lo:hi] @ self.p["orb_%s.w" % tag])  # (n_s, K N)
            pi, sig = self.p["env_%s.pi" % tag], self.p["env_%s.sigma" % tag]  # (atoms, K N)
            env = 0.0
            for I in range(self.R.shape[0]):
                d = x[lo:hi] - self.R[I]
                r = torch.sqrt((d * d).sum(dim=1, keepdim=True))  # (n_s, 1)
                env = env + pi[I] * torch.exp(-sig[I] * r)
            envs.append(env)
        phi = torch.cat(parts, dim=0) * torch.cat(envs, dim=0)  # (N, K N); column o = k N + j
        return phi.reshape(N, K, N).permute(1, 0, 2)  # [k, i, j]

    def pair_matrices(self, x, h):
        """The Pfaffian head's K skew pair matrices (n x n, n = N + (N mod 2)), from F (+ 1 border) enveloped
        orbital features per electron and Pfaffian."""
        N, K, F, nu = self.N, self.K, self.F, self.n_up
        b = N % 2
        C = K * (F + b)  # projection columns; column k (F + b) + o is feature o of Pfaffian k
        rows = []
        for lo, hi, tag in ((0, nu, "up"), (nu, N, "down")):
            if hi <= lo:
                continue
            proj = h[lo:hi] @ self.p["pf_orb_%s.w" % tag]  # (n_s, C)
            assert proj.shape[1] == C
            pi, sig = self.p["env_%s.pi" % tag], self.p["env_%s.sigma" % tag]  # (atoms, C)
            env = 0.0
            for I in range(self.R.shape[0]):
                r = torch.linalg.norm(x[lo:hi] - self.R[I], dim=1).unsqueeze(1)  # (n_s, 1)
                env = env + pi[I] * torch.exp(-sig[I] * r)
            rows.append(proj * env)
        feats = torch.cat(rows, dim=0).reshape(N, K, F + b)
        mats = []
        for k in range(K):
            Wk = self.p["pf_pair%d.w" % k] if K > 1 else self.p["pf_pair.w"]  # (F, F)
            Mk = feats[:, k, :F]
            Phi = Mk @ (Wk - Wk.transpose(0, 1)) @ Mk.transpose(0, 1)
            if b:
                chi = feats[:, k, F:F + 1]  # (N, 1)
                top = torch.cat([Phi, chi], dim=1)
                bottom = torch.cat([-chi.transpose(0, 1), x.new_zeros((1, 1))], dim=1)
                Phi = torch.cat([top, bottom], dim=0)
            mats.append(Phi)
        return mats

    def jastrow(self, x):
        a_par, a_anti = self.p["jastrow.alpha"][0, 0], self.p["jastrow.alpha"][0, 1]
        J = x.new_zeros(())
        for i in range(self.N):
            for j in range(i + 1, self.N):
                rij = torch.linalg.norm(x[i] - x[j])
                same = (i < self.n_up) == (j < self.n_up)
                c, a = (0.25, a_par) if same else (0.5, a_anti)
                J = J - c * a * a / (a + rij)
        return J

    # -- the wavefunction ------------------------------------------------------------------------------
    def log_psi(self, xflat):
        """xflat: (3N,). Returns (log|psi|, sign) with log|psi| differentiable w.r.t. xflat."""
        x = xflat.reshape(self.N, 3)
        h = self.features(x) @ self.p["embed.w"]
        for l in range(self.L):
            h = h + self.attention(h, l)
            if self.cfg["layernorm"]:
                h = self.layernorm(h, "l%d.ln1" % l)
            h = h + self.mlp(h, l)
            if self.cfg["layernorm"]:
                h = self.layernorm(h, "l%d.ln2" % l)
        if self.pfaffian:
            terms = [logpfaffian(Phi) for Phi in self.pair_matrices(x, h)]
            sgn = torch.tensor([float(t[1]) for t in terms])
            logabs = torch.stack([t[0] for t in terms])
        else:
            M = self.orbitals(x, h)
            sgn, logabs = torch.linalg.slogdet(M)  # (K,), (K,)
        # signed log-sum-exp: log|sum_k s_k e^{l_k}| = m + log|sum_k s_k e^{l_k - m}|
        m = logabs.max().detach()
        total = (sgn * torch.exp(logabs - m)).sum()
        out = m + torch.log(torch.abs(total))
        if self.cfg["jastrow"]:
            out = out + self.jastrow(x)
        return out, int(torch.sign(total).item())

    def potential(self, xflat):
        x = xflat.reshape(self.N, 3)
        v = 0.0
        for I in range(self.R.shape[0]):
            v -= self.Z * (1.0 / torch.linalg.norm(x - self.R[I], dim=1)).sum().item()
        for i in range(self.N):
            for j in range(i + 1, self.N):
                v += 1.0 / torch.linalg.norm(x[i] - x[j]).item()
        return v

    def evaluate(self, xflat):
        """log|psi|, sign, grad (3N,), Laplacian, local energy at one walker."""
        xv = xflat.clone().requires_grad_(True)
        lp, sgn = self.log_psi(xv)
        (g,) = torch.autograd.grad(lp, xv, create_graph=True)
        lap = 0.0
        for d in range(xv.shape[0]):
            (row,) = torch.autograd.grad(g[d], xv, retain_graph=True)
            lap += row[d].item()
        g = g.detach()
        g2 = float((g * g).sum())
        v = self.potential(xflat)
        eloc = -0.5 * (lap + g2) + v
        scale = max(1.0, abs(eloc), 0.5 * abs(lap) + 0.5 * g2 + abs(v))
        return lp.item(), sgn, g.numpy(), lap, eloc, scale


def rel_err(c, ref, scale=None):
    c, ref = np.asarray(c, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return np.abs(c - ref) / (np.maximum(1.0, np.abs(ref)) if scale is None else scale)


def check(directory):
    net = Psiformer(directory)
    cfg = net.cfg
    X = np.load(os.path.join(directory, "x.npy")).reshape(-1, 3 * net.N)
    W = X.shape[0]
    c = {k: np.load(os.path.join(directory, "c_%s.npy" % k)) for k in ("logpsi", "logpsi_fwd", "sign", "lap", "eloc")}
    c["grad"] = np.load(os.path.join(directory, "c_grad.npy")).reshape(W, 3 * net.N)
    ref = {"logpsi": np.zeros(W), "sign": np.zeros(W), "grad": np.zeros((W, 3 * net.N)), "lap": np.zeros(W),
           "eloc": np.zeros(W)}
    escale = np.zeros(W)
    for w in range(W):
        lp, s, g, lap, el, sc = net.evaluate(torch.from_numpy(X[w].copy()))
        ref["logpsi"][w], ref["sign"][w], ref["grad"][w], ref["lap"][w], ref["eloc"][w] = lp, s, g, lap, el
        escale[w] = sc
    ref["logpsi_fwd"] = ref["logpsi"]
    label = "%s L=%d H=%d d=%d M=%d K=%d ln=%d jas=%d W=%d" % (cfg["atom"], cfg["layers"], cfg["heads"], cfg["head_dim"],
                                                             cfg["mlp"], cfg["dets"], cfg["layernorm"], cfg["jastrow"], W)
    if net.pfaffian:
        label = "%s pf F=%d" % (label, net.F)
    ok = True
    parts = []
    bad = np.zeros(W, dtype=bool)
    for q in ("logpsi", "logpsi_fwd", "grad", "lap", "eloc"):
        e = rel_err(c[q], ref[q], escale if q == "eloc" else None)
        e = np.where(np.isfinite(e), e, np.inf)
        worst = float(np.max(e))
        good = worst <= TOL[q]
        ok &= good
        bad |= (e.reshape(W, -1) > TOL[q]).any(axis=1)
        parts.append("%s %.2e%s" % (q, worst, "" if good else " FAIL(>%.0e)" % TOL[q]))
    parts.append("(eloc_plain %.2e)" % float(np.max(rel_err(c["eloc"], ref["eloc"]))))
    nsign = int(np.sum(c["sign"] != ref["sign"]))
    if nsign:
        ok = False
        bad |= c["sign"] != ref["sign"]
        parts.append("sign FAIL (%d walkers differ)" % nsign)
    else:
        parts.append("sign ok")
    print("%-4s %-60s %s" % ("ok" if ok else "FAIL", label, "  ".join(parts)))
    if not ok:
        for w in np.flatnonzero(bad):
            print("     walker %d: C logpsi %.15g ref %.15g | C lap %.15g ref %.15g | C eloc %.15g ref %.15g | sign %d/%d"
                  % (w, c["logpsi"][w], ref["logpsi"][w], c["lap"][w], ref["lap"][w], c["eloc"][w], ref["eloc"][w],
                     c["sign"][w], ref["sign"][w]))
    return ok


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    self_test_logpfaffian()
    print("reference Pfaffian: agrees with the matching sum (2n <= 8), Pf^2 = det (2n <= 16) and the closed-form "
          "first and second derivatives")
    results = [check(d) for d in argv[1:]]
    failed = results.count(False)
    print("crosscheck: %d configuration(s), %d failed (metric |C - ref| / max(1, |ref|); E_L: / max(1, |E_L|, "
          "|lap|/2 + |grad|^2/2 + |V|))" % (len(results), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
