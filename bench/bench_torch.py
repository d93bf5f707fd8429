#!/usr/bin/python3
"""bench_torch.py — local-energy throughput of the PyTorch reference, beside the C numbers of bench/bench.c.

    /usr/bin/python3 bench/bench_torch.py [--batches 256,1024] [--threads 1,2] [--methods loop,batched,functorch]
                                          [--budget SEC] [--loop-walkers N] [--chunk C] [--csv FILE]
                                          [--dtype float64|float32] DIR [DIR ...]
    (methods also: train_batched, train_functorch)

Each DIR is an export directory written by bench/reference/export.c (parameters, config.json, 8 walkers and the C
results). Three ways of computing E_L = -1/2 (lap log|psi| + |grad log|psi||^2) + V with PyTorch autograd:

  loop       the reference's own per-walker evaluation (psiformer_ref.Psiformer.evaluate, as used by
             `make crosscheck`): log|psi| of one walker, its gradient with create_graph, then one double-backward
             pass per coordinate for the Hessian diagonal. Per-walker code, so its throughput does not depend on the
             batch; it is timed on --loop-walkers walkers (or fewer, within --budget).
  batched    the same Hessian-diagonal loop batched over walkers: log|psi| of the whole batch (the network below,
             written for a leading batch dimension), one gradient, and 3N double-backward passes
             d/dx (sum_b g_b[d]) — walkers are independent, so row d of each walker's Hessian comes out at once.
  functorch  functorch (torch 1.13's torch.func): vmap over walkers of jacfwd(grad(log|psi|)) — forward-over-
             reverse, the full 3N x 3N Hessian per walker, of which the trace is taken; in chunks of --chunk
             walkers to bound the memory.

The batched network reuses psiformer_ref.Psiformer (parameters, layer norm, configuration) and is checked against
the C numbers of the export directory (the 8 walkers) before it is timed; a disagreement beyond 1e-8 is printed
as a warning (the cross-check proper is `make crosscheck`). psiformer_ref.py itself is not modified.
  train_batched, train_functorch
             one whole VMC training iteration with Adam (class Trainer): 10 Metropolis sweeps, E_L by the batched
             or functorch method, the energy gradient by one backward pass, the Adam update, the refresh; throughput
             in walkers x iterations / s, beside build/bench's `train` with --optimizer adam.

--dtype float32 (default float64): the network is built and checked in float64 as above, then a float32 copy of
everything the timed code uses (parameters, nuclear position, spins and Jastrow constants, walkers) is timed with
torch's default dtype set to float32, so that tensors created inside the timed code are float32 too; before the
timing, two walkers are run once with every floating-point tensor any aten op produces recorded (E_L and log|psi|,
and for train_* a whole Trainer step with Adam), and a float64 one is an error. FermiNet trains in float32: this is
PyTorch's fair best case. The copy is fresh for each method (the Trainer's Adam steps do not touch the checked
float64 network). The dtype is printed and is the last column of the CSV; the check column stays the float64 one.

Timing: one warm-up on a few walkers, then each batch is run once and repeated while within --budget seconds; the
fastest run is reported, for each thread count of --threads (torch.set_num_threads). Prints one line per
measurement and appends rows to --csv. bench/report.py compares C on T cores with the better of PyTorch on T
threads and T times PyTorch on one thread (one process per core, which is often faster for these small ops).
"""
import argparse
import copy
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import psiformer_ref as ref  # noqa: E402  (sets the default dtype to float64)

try:
    import functorch  # torch 1.13 ships functorch separately; torch.func arrived in 2.0
    from functorch import grad as ft_grad, jacfwd as ft_jacfwd, vmap as ft_vmap
except Exception:  # pragma: no cover
    functorch = None

CSV_HEADER = ("impl,method,threads,atom,n_elec,n_layers,n_heads,head_dim,mlp,n_dets,batch,walkers_timed,"
              "walkers_per_s,us_per_walker,reps,check_max_err,dtype")
DTYPES = {"float64": torch.float64, "float32": torch.float32}

try:  # records the dtype of every tensor an aten op produces (forward, backward, optimizer); private in torch 1.13
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
except Exception:  # pragma: no cover
    TorchDispatchMode = None


class default_dtype:
    """with default_dtype(torch.float32): ... — torch's default dtype for tensors created inside, restored after."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


def softmax(z):
    """Softmax over the last axis, spelled out: torch 1.13 has no forward-mode rule for the backward of
    torch.softmax (_softmax_backward_data), which functorch's jacfwd(grad) needs."""
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values.detach())
    return e / e.sum(dim=-1, keepdim=True)


class BatchedPsiformer(ref.Psiformer):
    """The reference network with a leading walker dimension: x (B, 3N) -> log|psi| (B,)."""

    def __init__(self, directory):
        super().__init__(directory)
        N, nu = self.N, self.n_up
        self.spin = torch.tensor([1.0] * nu + [-1.0] * self.n_down).reshape(N, 1)
        ii, jj = torch.triu_indices(N, N, 1)
        self.pair_i, self.pair_j = ii, jj
        same = (ii < nu) == (jj < nu)
        alpha = self.p["jastrow.alpha"].reshape(-1)
        self.jas_c = torch.where(same, torch.tensor(0.25), torch.tensor(0.5))
        self.jas_a = torch.where(same, alpha[0], alpha[1])

    def astype(self, dtype):
        """A copy whose floating-point tensors (parameters, nuclear position, spins, Jastrow constants) are `dtype`
        copies; this network is left untouched (a Trainer's Adam steps on the copy do not reach it)."""
        other = copy.copy(self)
        other.p = {k: v.detach().to(dtype=dtype, copy=True) for k, v in self.p.items()}
        for name in ("R", "spin", "jas_c", "jas_a"):
            setattr(other, name, getattr(self, name).detach().to(dtype=dtype, copy=True))
        return other

    def ln_b(self, h, name):
        mean = h.mean(dim=-1, keepdim=True)
        cen = h - mean
        var = (cen * cen).mean(dim=-1, keepdim=True)
        return cen / torch.sqrt(var + ref.LN_EPS) * self.p[name + ".scale"][0] + self.p[name + ".offset"][0]

    def log_psi_b(self, X):
        B, N, H, dh, K = X.shape[0], self.N, self.H, self.dh, self.K
        x = X.reshape(B, N, 3)
        cols, dists = [], []
        for I in range(self.R.shape[0]):
            d = x - self.R[I]
            r = torch.sqrt((d * d).sum(dim=-1, keepdim=True))  # (B, N, 1)
            lg = torch.log(1.0 + r)
            cols += [lg, d * (lg / r)]
            dists.append(r)
        cols.append(self.spin.expand(B, N, 1))
        h = torch.cat(cols, dim=-1) @ self.p["embed.w"]
        for l in range(self.L):
            q = (h @ self.p["l%d.q.w" % l]).reshape(B, N, H, dh)
            k = (h @ self.p["l%d.k.w" % l]).reshape(B, N, H, dh)
            v = (h @ self.p["l%d.v.w" % l]).reshape(B, N, H, dh)
            w = softmax(torch.einsum("bihc,bjhc->bhij", q, k) / math.sqrt(dh))
            h = h + torch.einsum("bhij,bjhc->bihc", w, v).reshape(B, N, H * dh) @ self.p["l%d.o.w" % l]
            if self.cfg["layernorm"]:
                h = self.ln_b(h, "l%d.ln1" % l)
            u = torch.tanh(h @ self.p["l%d.mlp1.w" % l] + self.p["l%d.mlp1.b" % l][0])
            h = h + torch.tanh(u @ self.p["l%d.mlp2.w" % l] + self.p["l%d.mlp2.b" % l][0])
            if self.cfg["layernorm"]:
                h = self.ln_b(h, "l%d.ln2" % l)
        parts, envs = [], []
        for lo, hi, tag in ((0, self.n_up, "up"), (self.n_up, N, "down")):
            if hi <= lo:
                continue
            parts.append(h[:, lo:hi] @ self.p["orb_%s.w" % tag])
            pi, sig = self.p["env_%s.pi" % tag], self.p["env_%s.sigma" % tag]
            env = 0.0
            for I in range(self.R.shape[0]):
                env = env + pi[I] * torch.exp(-sig[I] * dists[I][:, lo:hi])
            envs.append(env)
        phi = torch.cat(parts, dim=1) * torch.cat(envs, dim=1)  # (B, N, K N)
        M = phi.reshape(B, N, K, N).permute(0, 2, 1, 3)  # (B, K, N, N)
        sgn, logabs = torch.linalg.slogdet(M)
        m = logabs.max(dim=1, keepdim=True).values.detach()
        out = m[:, 0] + torch.log(torch.abs((sgn * torch.exp(logabs - m)).sum(dim=1)))
        if self.cfg["jastrow"]:
            dx = x[:, self.pair_i] - x[:, self.pair_j]
            rij = torch.sqrt((dx * dx).sum(dim=-1))
            out = out - (self.jas_c * self.jas_a * self.jas_a / (self.jas_a + rij)).sum(dim=1)
        return out

    def potential_b(self, X):
        with torch.no_grad():
            x = X.reshape(X.shape[0], self.N, 3)
            v = 0.0
            for I in range(self.R.shape[0]):
                v = v - self.Z * (1.0 / torch.linalg.norm(x - self.R[I], dim=-1)).sum(dim=1)
            dx = x[:, self.pair_i] - x[:, self.pair_j]
            return v + (1.0 / torch.linalg.norm(dx, dim=-1)).sum(dim=1)

    # -- local energies of a batch: (E_L, lap, |grad|^2, V), each (B,) --------------------------------------
    def eloc_batched(self, X):
        Xv = X.clone().requires_grad_(True)
        lp = self.log_psi_b(Xv)
        (g,) = torch.autograd.grad(lp.sum(), Xv, create_graph=True)
        lap = torch.zeros(X.shape[0])
        for d in range(X.shape[1]):
            (row,) = torch.autograd.grad(g[:, d].sum(), Xv, retain_graph=True)
            lap = lap + row[:, d]
        g = g.detach()
        g2 = (g * g).sum(dim=1)
        v = self.potential_b(X)
        return -0.5 * (lap.detach() + g2) + v, lap.detach(), g2, v

    def eloc_functorch(self, X, chunk):
        def logpsi1(x):  # one walker, (3N,) -> scalar
            return self.log_psi_b(x.unsqueeze(0))[0]

        def grad_and_aux(x):
            g = ft_grad(logpsi1)(x)
            return g, g

        hess = ft_vmap(ft_jacfwd(grad_and_aux, has_aux=True))
        laps, g2s = [], []
        for c in range(0, X.shape[0], chunk):
            Hc, gc = hess(X[c:c + chunk])  # (b, 3N, 3N), (b, 3N)
            laps.append(torch.diagonal(Hc, dim1=1, dim2=2).sum(dim=1).detach())
            g2s.append((gc * gc).sum(dim=1).detach())
        lap, g2 = torch.cat(laps), torch.cat(g2s)
        v = self.potential_b(X)
        return -0.5 * (lap + g2) + v, lap, g2, v


class Trainer:
    """One VMC training iteration of the batched network, as build/bench times psf_vmc_train_step with Adam:
    `sweeps` all-electron Metropolis moves of every walker (log|psi| of the batch per sweep, no gradients), E_L of the
    batch by `method` (batched or functorch), the energy gradient 2 E[(E_L - <E_L>) grad_theta log|psi|] (E_L clipped
    at 5 mean absolute deviations from the median) by one backward pass, torch.optim.Adam, and the walkers' log|psi|
    refreshed. For timing only: the Jastrow's alpha enters through constants fixed at construction."""

    def __init__(self, net, X, method, chunk, sweeps=10, width=0.1, lr=3e-3):
        self.net, self.method, self.chunk, self.sweeps, self.width = net, method, chunk, sweeps, width
        self.params = list(net.p.values())
        self.opt = torch.optim.Adam(self.params, lr=lr)
        self.X = X.clone()
        with torch.no_grad():
            self.lp = net.log_psi_b(self.X)

    def _grad(self, on):
        for t in self.params:
            t.requires_grad_(on)

    def step(self):
        net = self.net
        self._grad(False)
        with torch.no_grad():
            for _ in range(self.sweeps):
                Xp = self.X + self.width * torch.randn_like(self.X)
                lpp = net.log_psi_b(Xp)
                acc = torch.log(torch.rand_like(lpp)) < 2.0 * (lpp - self.lp)
                self.X = torch.where(acc[:, None], Xp, self.X)
                self.lp = torch.where(acc, lpp, self.lp)
        el = (net.eloc_batched(self.X) if self.method == "batched" else net.eloc_functorch(self.X, self.chunk))[0]
        med = el.median()
        dev = (el - med).abs().mean()
        el = torch.clamp(el, med - 5 * dev, med + 5 * dev)
        self._grad(True)
        loss = 2.0 * ((el - el.mean()) * net.log_psi_b(self.X)).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self._grad(False)
        with torch.no_grad():
            self.lp = net.log_psi_b(self.X)


def eloc_loop(net, X):
    out = []
    for w in range(X.shape[0]):
        out.append(net.evaluate(X[w].clone())[4])
    return torch.tensor(out)


def check(net, directory, method, chunk):
    """Max over the exported walkers of |E_L - E_L^C| / max(1, |E_L|, |lap|/2 + |grad|^2/2 + |V|)."""
    X = torch.from_numpy(np.load(os.path.join(directory, "x.npy")).reshape(-1, 3 * net.N).copy())
    c_eloc = np.load(os.path.join(directory, "c_eloc.npy")).reshape(-1)
    if method == "loop":  # the reference itself (`make crosscheck` compares all 8): two walkers, as a warm-up
        err = 0.0
        for w in range(min(2, X.shape[0])):
            _, _, _, lap, el, sc = net.evaluate(X[w].clone())
            err = max(err, abs(el - c_eloc[w]) / sc)
        return err
    method = method[len("train_"):] if method.startswith("train_") else method  # training: its E_L method
    el, lap, g2, v = net.eloc_batched(X) if method == "batched" else net.eloc_functorch(X, chunk)
    el, lap, g2, v = (t.numpy() for t in (el, lap, g2, v))
    scale = np.maximum.reduce([np.ones_like(el), np.abs(el), 0.5 * np.abs(lap) + 0.5 * g2 + np.abs(v)])
    return float(np.max(np.abs(el - c_eloc) / scale))


def probe_dtype(net, method, X, chunk, dtype):
    """Runs `method` once on the walkers X (a couple) and raises AssertionError if E_L or log|psi| (and, for train_*,
    a whole Trainer step: sweeps, E_L, backward, Adam) is not `dtype`, or if any aten op produced a floating-point
    tensor of another dtype on the way (when torch has TorchDispatchMode; not for the functorch methods, as torch
    1.13's functorch transforms fail under a Python dispatch mode). Call inside `with default_dtype(dtype)`. Also the
    warm-up of the `dtype` path. Returns the number of aten ops seen (0 when not recorded)."""
    seen = {}
    el_method = method[len("train_"):] if method.startswith("train_") else method

    def run():
        if method == "loop":
            lp = net.log_psi(X[0].clone())[0]
            el = eloc_loop(net, X)
        else:
            with torch.no_grad():
                lp = net.log_psi_b(X)
            el = net.eloc_batched(X)[0] if el_method == "batched" else net.eloc_functorch(X, chunk)[0]
            if method.startswith("train_"):
                tr = Trainer(net, X, method[len("train_"):], chunk, sweeps=1)
                tr.step()
                lp = tr.lp
                for t in tr.params + [tr.X] + [v for st in tr.opt.state.values() for v in st.values()
                                               if torch.is_tensor(v)]:
                    assert t.dtype == dtype, "Trainer state is %s, not %s" % (t.dtype, dtype)
        assert lp.dtype == dtype and el.dtype == dtype, "log|psi| %s, E_L %s, not %s" % (lp.dtype, el.dtype, dtype)

    if TorchDispatchMode is None or el_method == "functorch":
        run()
        return 0

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if torch.is_tensor(t) and t.is_floating_point():
                    seen.setdefault(t.dtype, set()).add(str(func))
            return out

    with Record():
        run()
    bad = {str(k): sorted(v) for k, v in seen.items() if k != dtype}
    assert not bad, "%s tensors in the %s path of %s: %s" % (", ".join(bad), dtype, method, bad)
    return len(seen.get(dtype, ()))


def random_walkers(net, B, seed):
    gen = torch.Generator().manual_seed(seed)
    return (net.R[0].repeat(net.N) + torch.randn(B, 3 * net.N, generator=gen)).contiguous()


def time_method(net, method, X, budget, chunk):
    trainer = Trainer(net, X, method[len("train_"):], chunk) if method.startswith("train_") else None

    def run():
        t0 = time.perf_counter()
        if trainer:
            trainer.step()
        elif method == "batched":
            net.eloc_batched(X)
        elif method == "functorch":
            net.eloc_functorch(X, chunk)
        else:
            eloc_loop(net, X)
        return time.perf_counter() - t0

    best = run()
    reps, spent = 1, best
    while spent + best <= budget and reps < 5:
        t = run()
        spent += t
        best = min(best, t)
        reps += 1
    return best, reps


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--batches", default="256,1024")
    ap.add_argument("--threads", default=str(os.cpu_count() or 1), help="thread counts, e.g. 1,2")
    ap.add_argument("--methods", default="loop,batched,functorch")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of repetitions per measurement")
    ap.add_argument("--loop-walkers", type=int, default=16, help="at most this many walkers for the loop method")
    ap.add_argument("--chunk", type=int, default=64, help="walkers per functorch call")
    ap.add_argument("--csv")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float64",
                    help="dtype of the timed computation (the check against C is float64 either way)")
    a = ap.parse_args(argv[1:])
    dtype = DTYPES[a.dtype]
    threads = [int(t) for t in a.threads.split(",") if t]
    methods = [m for m in a.methods.split(",") if m]
    if functorch is None:
        for m in ("functorch", "train_functorch"):
            if m in methods:
                print("bench_torch: functorch is not importable with torch %s; skipping %s" % (torch.__version__, m))
                methods.remove(m)
    batches = [int(b) for b in a.batches.split(",") if b]
    csv = None
    if a.csv:
        new = not os.path.exists(a.csv) or os.path.getsize(a.csv) == 0
        csv = open(a.csv, "a")
        if new:
            csv.write(CSV_HEADER + "\n")
    print("PyTorch %s (functorch %s), %s thread(s), %s" %
          (torch.__version__, getattr(functorch, "__version__", "none"), a.threads, a.dtype))
    impl = "torch" if dtype == torch.float64 else "torch %s" % a.dtype  # the printed label
    for d in a.dirs:
        net = BatchedPsiformer(d)
        c = net.cfg
        label = "%-3s d=%-3d" % (c["atom"], c["head_dim"])
        for method in methods:
            torch.set_num_threads(threads[0])
            try:
                err = check(net, d, method, a.chunk)  # also the warm-up
            except Exception as e:  # e.g. an op without a forward-mode rule in this torch
                print("  %s %-9s failed: %s: %s" % (label, method, type(e).__name__, e))
                continue
            flag = "" if err <= 1e-8 else "  WARNING: differs from the C local energy"
            # the timed network: the checked one, or a copy in the timed dtype; always a copy for a training
            # method, whose Adam steps would otherwise change the network the next method is checked against
            tnet = net.astype(dtype) if dtype != torch.float64 or method.startswith("train_") else net
            if dtype != torch.float64:
                try:
                    with default_dtype(dtype):
                        probe_dtype(tnet, method, random_walkers(net, 2, 98).to(dtype), a.chunk, dtype)
                except Exception as e:
                    print("  %s %-9s %s failed: %s: %s" % (label, method, a.dtype, type(e).__name__, e))
                    continue
            for th in threads:
                torch.set_num_threads(th)
                if method == "loop":
                    # per-walker code: time a few walkers, within the budget
                    X = random_walkers(net, a.loop_walkers, 99).to(dtype)
                    with default_dtype(dtype):
                        n, t0 = 0, time.perf_counter()
                        while n < a.loop_walkers and (n < 2 or time.perf_counter() - t0 < a.budget):
                            eloc_loop(tnet, X[n:n + 1])
                            n += 1
                        t = time.perf_counter() - t0
                    sizes = [(b, n) for b in batches]  # the same per-walker throughput applies to every batch
                    times = {b: (t, 1) for b in batches}
                else:
                    sizes, times = [], {}
                    for B in batches:
                        X = random_walkers(net, B, 99).to(dtype)  # the same walkers in either dtype
                        with default_dtype(dtype):
                            times[B] = time_method(tnet, method, X, a.budget, a.chunk)
                        sizes.append((B, B))
                for B, n in sizes:
                    t, reps = times[B]
                    wps = n / t
                    print("  %s B=%-5d T=%d %s %-9s %10.1f walkers/s %10.1f us/walker  (%d walker%s timed, %d run%s; "
                          "check %.1e)%s" % (label, B, th, impl, method, wps, 1e6 * t / n, n, "s" if n > 1 else "",
                                             reps, "s" if reps > 1 else "", err, flag))
                    sys.stdout.flush()
                    if csv:
                        csv.write("torch,%s,%d,%s,%d,%d,%d,%d,%d,%d,%d,%d,%.6g,%.6g,%d,%.3g,%s\n" % (
                            method, th, c["atom"], net.N, c["layers"], c["heads"], c["head_dim"], c["mlp"],
                            c["dets"], B, n, wps, 1e6 * t / n, reps, err, a.dtype))
                        csv.flush()
    if csv:
        csv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
