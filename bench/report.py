#!/usr/bin/python3
"""report.py — merges the benchmark CSVs of bench/run.sh into bench.csv and prints the summary (issue 4).

    python3 bench/report.py [--out bench/out] [--threads 2]

Reads OUT/peak.csv, OUT/c.csv (bench/bench.c), OUT/torch.csv (bench/bench_torch.py; optional) and writes
OUT/bench.csv (one row per atom x width x batch) and OUT/fit.csv (electron-count exponents). Standard library only.
Prints: the throughput table with GFLOP/s, % of FP64 peak and the C / PyTorch ratios; thread scaling; OpenBLAS on
vs off; the exponents p of cost per walker ~ N^p (least squares in log-log over the atoms); whole training
iterations with Adam against PyTorch in float64 and float32; the issue's targets. Never fails because of a timing.
torch.csv's dtype column (bench_torch.py --dtype) is read by name; a file without it is float64 throughout.
"""
import argparse
import csv
import math
import os
import sys


def read(path):
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def tdtype(r):
    """The dtype of a torch.csv row: its dtype column; float64 for files written before that column existed (also
    for old-header files a newer bench_torch.py appended to: the extra field lands under the key None)."""
    v = r.get("dtype") or (r.get(None) or [None])[0]
    return v.strip() if v and v.strip() else "float64"


def f(x):
    try:
        v = float(x)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None


def fmt(v, spec="%.1f", empty="-"):
    return empty if v is None else spec % v


def ratio(a, b):
    return a / b if a is not None and b else None


def fit_exponent(ns, ts):
    """least squares slope of log t against log N"""
    pts = [(math.log(n), math.log(t)) for n, t in zip(ns, ts) if n and t and t > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else None


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv[1:])
    T = a.threads
    # peak.csv: kind dgemm (OpenBLAS, issue 4's FP64 peak), fma64 / fma32 (bench_peak's FMA loop in registers);
    # rows without a kind column are dgemm rows (files from before the FMA loop)
    pkrows = read(os.path.join(a.out, "peak.csv"))
    peaks = {kind: {int(r["threads"]): f(r["gflops"]) for r in pkrows if (r.get("kind") or "dgemm") == kind}
             for kind in ("dgemm", "fma64", "fma32")}
    peak = peaks["dgemm"]
    crow = read(os.path.join(a.out, "c.csv"))
    trow = read(os.path.join(a.out, "torch.csv"))

    # C[(build, tag, threads, atom, hd, batch, metric)] = row
    C = {}
    for r in crow:
        C[(r["build"], r["tag"], int(r["threads"]), r["atom"], int(r["head_dim"]), int(r["batch"]), r["metric"])] = r
    TT = {}  # TT[(method, threads, atom, hd, batch, dtype)] = row
    for r in trow:
        TT[(r["method"], int(r["threads"]), r["atom"], int(r["head_dim"]), int(r["batch"]), tdtype(r))] = r

    def cval(build, tag, threads, atom, hd, batch, metric, col="walkers_per_s"):
        r = C.get((build, tag, threads, atom, hd, batch, metric))
        return f(r[col]) if r else None

    def tval(method, atom, hd, batch, dtype="float64"):
        """PyTorch on T cores: the better of T threads and T x one thread (one process per core)."""
        rT, r1 = TT.get((method, T, atom, hd, batch, dtype)), TT.get((method, 1, atom, hd, batch, dtype))
        vT = f(rT["walkers_per_s"]) if rT else None
        v1 = T * f(r1["walkers_per_s"]) if r1 and f(r1["walkers_per_s"]) else None
        return max([v for v in (vT, v1) if v is not None], default=None)

    def tbasis(atom, hd, batch):
        best, basis = None, ""
        for method in ("loop", "batched", "functorch"):
            for th in sorted({T, 1}):
                r = TT.get((method, th, atom, hd, batch, "float64"))
                v = f(r["walkers_per_s"]) * (T if th == 1 and T > 1 else 1) if r else None
                if v is not None and (best is None or v > best):
                    best, basis = v, "%s %s" % (method, "%d threads" % T if th == T else "%d x 1 thread" % T)
        return basis

    configs = sorted({(k[3], k[4], k[5]) for k in C if k[1] == "table"},
                     key=lambda c: (c[1] != 16, c[1], c[2], int(next(r["n_elec"] for r in crow if r["atom"] == c[0]))))
    n_elec = {r["atom"]: int(r["n_elec"]) for r in crow}
    n_params = {(r["atom"], int(r["head_dim"])): int(r["n_params"]) for r in crow}

    for kind, name in (("dgemm", "FP64 peak (OpenBLAS dgemm)"), ("fma64", "FP64 FMA loop"), ("fma32", "FP32 FMA loop")):
        print("%s: " % name + (", ".join("%d thread%s %.1f GFLOP/s" % (t, "s" if t > 1 else "", g)
                                        for t, g in sorted(peaks[kind].items()) if g) or "not measured"))

    # The peak on T cores: the T-thread rate, or T times the one-thread rate when that is larger (on a busy machine
    # the other load depresses the T-thread rate; dgemm and the FMA loop scale almost perfectly over cores).
    def on_T(d):
        return max([v for v in (d.get(T), T * d[1] if d.get(1) else None) if v], default=None)

    pk, pk64, pk32 = on_T(peak), on_T(peaks["fma64"]), on_T(peaks["fma32"])
    if pk:
        print("peak used for %%peak on %d thread%s: %.1f GFLOP/s" % (T, "s" if T > 1 else "", pk))
    if pk64:
        print("FP64 FMA-loop peak on %d thread%s: %.1f GFLOP/s (%%fma64); FP32: %s GFLOP/s" % (
            T, "s" if T > 1 else "", pk64, fmt(pk32, "%.1f")))

    # ---- the table ----------------------------------------------------------------------------------------------
    main_b = next((k[0] for k in C if k[1] == "table"), "builtin")
    other_b = next((k[0] for k in C if k[1] == "onoff"), None)
    rows = []
    for atom, hd, B in configs:
        g = lambda m, col="walkers_per_s": cval(main_b, "table", T, atom, hd, B, m, col)  # noqa: E731
        el = g("eloc")
        tl, tb, tf = tval("loop", atom, hd, B), tval("batched", atom, hd, B), tval("functorch", atom, hd, B)
        tbest = max([v for v in (tl, tb, tf) if v is not None], default=None)
        o_el = cval(other_b, "onoff", T, atom, hd, B, "eloc") if other_b else None
        s1, s2 = cval(main_b, "scaling", 1, atom, hd, B, "eloc"), cval(main_b, "scaling", T, atom, hd, B, "eloc")
        gf = g("eloc", "gflops")
        o_gf = cval(other_b, "onoff", T, atom, hd, B, "eloc", "gflops") if other_b else None
        rows.append({
            "atom": atom, "n_elec": n_elec[atom], "head_dim": hd, "width": 4 * hd, "batch": B,
            "n_params": n_params.get((atom, hd)), "threads": T, "build": main_b,
            "logpsi_wps": g("logpsi"), "eloc_wps": el, "train_wps": g("train"),
            "train_optimizer": (C.get((main_b, "table", T, atom, hd, B, "train")) or {}).get("optimizer"),
            "jet_mflop_per_walker": g("eloc", "mflop_per_walker"), "jet_gflops": gf,
            "jet_pct_peak": 100 * gf / pk if gf is not None and pk else None,
            "jet_pct_fma64": 100 * gf / pk64 if gf is not None and pk64 else None,
            "torch_loop_wps": tl, "torch_batched_wps": tb, "torch_functorch_wps": tf,
            "torch_best_basis": tbasis(atom, hd, B),
            "c_over_torch_best": ratio(el, tbest), "c_over_torch_loop": ratio(el, tl),
            "other_build": other_b or "", "other_eloc_wps": o_el, "other_jet_gflops": o_gf,
            "other_c_over_torch_best": ratio(o_el, tbest), "main_over_other_eloc": ratio(el, o_el),
            "eloc_wps_1thread": s1, "thread_speedup_eloc": ratio(s2, s1),
        })
    cols = list(rows[0].keys()) if rows else []
    with open(os.path.join(a.out, "bench.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else ("%.6g" % v if isinstance(v, float) else v)) for k, v in r.items()})

    opt = next((r["train_optimizer"] for r in rows if r["train_optimizer"]), "?")
    print("\nThroughput, walkers/s (%d threads, %s build; train = walkers x iterations / s with %s; E_L = jet pass + "
          "potential)" % (T, main_b, opt))
    print("%-3s %3s %4s %5s | %9s %9s %8s | %7s %6s | %8s %8s %8s | %7s %7s | %9s %7s" % (
        "", "N", "d", "B", "log|psi|", "E_L", "train", "GFLOP/s", "%peak", "pt loop", "pt batch", "pt func",
        "C/pt", "C/loop", "E_L " + (other_b or "")[:5], "C/pt"))
    for r in rows:
        print("%-3s %3d %4d %5d | %9s %9s %8s | %7s %6s | %8s %8s %8s | %7s %7s | %9s %7s" % (
            r["atom"], r["n_elec"], r["head_dim"], r["batch"], fmt(r["logpsi_wps"], "%.0f"), fmt(r["eloc_wps"], "%.0f"),
            fmt(r["train_wps"], "%.1f"), fmt(r["jet_gflops"], "%.2f"), fmt(r["jet_pct_peak"], "%.1f"),
            fmt(r["torch_loop_wps"], "%.1f"), fmt(r["torch_batched_wps"], "%.1f"), fmt(r["torch_functorch_wps"], "%.1f"),
            fmt(r["c_over_torch_best"], "%.2f"), fmt(r["c_over_torch_loop"], "%.0f"), fmt(r["other_eloc_wps"], "%.0f"),
            fmt(r["other_c_over_torch_best"], "%.2f")))
    print("  pt = the PyTorch reference on %d cores, the better of %d threads and %d x its one-thread rate (one process\n"
          "  per core) where that was measured: loop = its per-walker Hessian-diagonal loop, batch = the loop batched\n"
          "  over walkers, func = functorch vmap(jacfwd(grad)); C/pt = C E_L throughput / the best PyTorch method at the\n"
          "  same batch; C/loop = against the per-walker loop; %%peak of the %d-core peak; the last two columns: the %s\n"
          "  build's E_L throughput and its C/pt." % (T, T, T, T, other_b or "other"))

    # ---- thread scaling ---------------------------------------------------------------------------------------
    sc = sorted({(k[0], k[3], k[4], k[5]) for k in C if k[1] == "scaling"}, key=lambda c: (c[0] != main_b, n_elec[c[1]]))
    if sc:
        print("\nThread scaling 1 -> %d threads, walkers/s:" % T)
        for build, atom, hd, B in sc:
            parts = []
            for m in ("logpsi", "eloc", "train"):
                v1, v2 = cval(build, "scaling", 1, atom, hd, B, m), cval(build, "scaling", T, atom, hd, B, m)
                if v1 is not None and v2 is not None:
                    parts.append("%s %.1f -> %.1f (x%.2f)" % (m, v1, v2, v2 / v1))
            print("  %-8s %-3s d=%d B=%d: %s" % (build, atom, hd, B, "; ".join(parts)))

    # ---- OpenBLAS on / off -----------------------------------------------------------------------------------
    bl = sorted({(k[3], k[4], k[5]) for k in C if k[1] == "onoff"}, key=lambda c: (c[1] != 16, c[1], n_elec[c[0]]))
    if bl:
        print("\nOpenBLAS on / off (%d threads, OpenBLAS single-threaded inside), walkers/s built-in -> OpenBLAS:" % T)
        for atom, hd, B in bl:
            parts = []
            for m in ("logpsi", "eloc", "train"):
                vals = {main_b: cval(main_b, "table", T, atom, hd, B, m), other_b: cval(other_b, "onoff", T, atom, hd, B, m)}
                v0, v1 = vals.get("builtin"), vals.get("openblas")
                if v0 is not None and v1 is not None:
                    parts.append("%s %.1f -> %.1f (x%.2f)" % (m, v0, v1, v1 / v0))
            gfs = {main_b: cval(main_b, "table", T, atom, hd, B, "eloc", "gflops"),
                   other_b: cval(other_b, "onoff", T, atom, hd, B, "eloc", "gflops")}
            if gfs.get("builtin") is not None and gfs.get("openblas") is not None and pk:
                parts.append("jet GFLOP/s %.1f -> %.1f (%.1f%% -> %.1f%% of peak)" % (
                    gfs["builtin"], gfs["openblas"], 100 * gfs["builtin"] / pk, 100 * gfs["openblas"] / pk))
            print("  %-3s d=%-2d B=%d: %s" % (atom, hd, B, "; ".join(parts)))

    # ---- electron-count exponents ------------------------------------------------------------------------------
    fits = []
    print("\nCost per walker ~ N^p over %s (least squares in log-log):" % ", ".join(
        sorted({c[0] for c in configs}, key=lambda s: n_elec[s])))
    for build, tag in ((main_b, "table"), (other_b, "onoff")):
        for hd in sorted({c[1] for c in configs}):
            for B in sorted({c[2] for c in configs}):
                atoms = sorted({k[3] for k in C if k[:3] == (build, tag, T) and k[4] == hd and k[5] == B},
                               key=lambda s: n_elec[s])
                if len(atoms) < 2:
                    continue
                ns = [n_elec[s] for s in atoms]
                parts = []
                for m in ("logpsi", "eloc", "train"):
                    us = [cval(build, tag, T, s, hd, B, m, "us_per_walker") for s in atoms]
                    if None in us:
                        continue
                    p = fit_exponent(ns, us)
                    fits.append({"build": build, "head_dim": hd, "batch": B, "metric": m, "exponent": p,
                                 "atoms": " ".join(atoms)})
                    parts.append("%s p=%.2f" % (m, p))
                mf = [cval(build, tag, T, s, hd, B, "eloc", "mflop_per_walker") for s in atoms]
                if None not in mf:
                    p = fit_exponent(ns, mf)
                    fits.append({"build": build, "head_dim": hd, "batch": B, "metric": "jet_flops", "exponent": p,
                                 "atoms": " ".join(atoms)})
                    parts.append("(jet flop count p=%.2f)" % p)
                if parts:
                    print("  %-8s d=%-2d B=%-4d %s" % (build, hd, B, "  ".join(parts)))
    if trow:
        for hd in sorted({int(r["head_dim"]) for r in trow}):
            for method in ("loop", "batched", "functorch"):
                pts = sorted({(int(r["n_elec"]), f(r["us_per_walker"])) for r in trow if r["method"] == method and
                              int(r["head_dim"]) == hd and int(r["batch"]) == 256 and int(r["threads"]) == T and
                              tdtype(r) == "float64"})
                pts = sorted(dict(pts).items())  # one point per atom
                if len(pts) >= 2:
                    p = fit_exponent([q[0] for q in pts], [q[1] for q in pts])
                    fits.append({"build": "torch-" + method, "head_dim": hd, "batch": 256, "metric": "eloc",
                                 "exponent": p, "atoms": ""})
                    print("  torch %-9s d=%-2d B=256  eloc p=%.2f" % (method, hd, p))
    with open(os.path.join(a.out, "fit.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["build", "head_dim", "batch", "metric", "exponent", "atoms"])
        w.writeheader()
        for r in fits:
            w.writerow(dict(r, exponent="" if r["exponent"] is None else "%.4f" % r["exponent"]))

    # ---- the Psiformer paper's carbon network -------------------------------------------------------------------
    paper = sorted({(k[0], k[3], k[4], k[5]) for k in C if k[1] == "paper"})
    for build, atom, hd, B in paper:
        r = next(r for r in crow if r["tag"] == "paper" and r["atom"] == atom)
        el, tr = cval(build, "paper", T, atom, hd, B, "eloc"), cval(build, "paper", T, atom, hd, B, "train")
        gf = cval(build, "paper", T, atom, hd, B, "eloc", "gflops")
        tb, tf = tval("batched", atom, hd, B), tval("functorch", atom, hd, B)
        tbest = max([v for v in (tb, tf) if v is not None], default=None)
        print("\nThe Psiformer paper's carbon network (%s layers, %s x %s heads, MLP %s, %s determinants, %s "
              "parameters), %s build, B=%d, %d threads:" % (r["n_layers"], r["n_heads"], hd, r["mlp"], r["n_dets"],
                                                            r["n_params"], build, B, T))
        print("  E_L %s walkers/s (jet %s GFLOP/s = %s%% of peak, %s%% of the FP64 FMA loop); train %s walkers x "
              "iterations/s; PyTorch batched %s, functorch %s walkers/s; C / PyTorch = %s" % (
                  fmt(el, "%.1f"), fmt(gf, "%.2f"), fmt(100 * gf / pk if gf is not None and pk else None, "%.1f"),
                  fmt(100 * gf / pk64 if gf is not None and pk64 else None, "%.1f"),
                  fmt(tr, "%.2f"), fmt(tb, "%.1f"), fmt(tf, "%.1f"), fmt(ratio(el, tbest), "%.2f")))

    # ---- SPRING's kernel: the B x B product of Ō in float32 ---------------------------------------------------
    gram = sorted({(k[0], k[3], k[4], k[5]) for k in C if k[6] == "gram"}, key=lambda c: c[3])
    if gram:
        print("\nSPRING's kernel O O^T in float32 (O: B x P, the upper triangle: B (B + 1) P flops), %s build:" %
              gram[0][0])
    for build, atom, hd, B in gram:
        r = next(r for r in crow if r["metric"] == "gram" and int(r["batch"]) == B and r["atom"] == atom)
        parts = []
        for th in sorted({1, T}):
            den = peaks["fma32"].get(1) if th == 1 else pk32
            g1 = cval(build, "gram", th, atom, hd, B, "gram", "gflops")
            if g1 is not None:
                parts.append("%d thread%s %.1f GFLOP/s = %s%% of the FP32 FMA loop (%.3f s)" % (
                    th, "s" if th > 1 else "", g1, fmt(100 * g1 / den if den else None, "%.1f"),
                    B * (B + 1) * f(r["n_params"]) / (g1 * 1e9)))
        print("  %s d=%d B=%d P=%s: %s" % (atom, hd, B, r["n_params"], "; ".join(parts)))

    # ---- whole training iterations with Adam against the PyTorch Trainer (step 2e) ----------------------------
    def train_cmp(atom):
        """C's Adam training iteration (float64) and PyTorch's best Trainer method in float64 and in float32."""
        c_tr = cval(main_b, "adam", T, atom, 16, 256, "train")
        pt = {dt: {m: tval("train_" + m, atom, 16, 256, dt) for m in ("batched", "functorch")}
              for dt in ("float64", "float32")}
        best = {dt: max([v for v in pt[dt].values() if v is not None], default=None) for dt in pt}
        return c_tr, pt, best

    def c_f32(atom):
        """C's Adam training iteration from the float build (bench_f32, PSF_REAL float), if measured."""
        return cval("builtin-f32", "adam", T, atom, 16, 256, "train")

    adam_atoms = [a for a in ("He", "Be", "C", "Ne") if cval(main_b, "adam", T, a, 16, 256, "train") is not None]
    if adam_atoms:
        print("\nTraining iteration with Adam against PyTorch's Trainer (default network, B=256, %d threads, %s build; "
              "walkers x iterations/s):" % (T, main_b))
        for atom in adam_atoms:
            c_tr, pt, best = train_cmp(atom)
            print("  %-3s C (float64) %.1f | PyTorch float64: batched %s, functorch %s | PyTorch float32: batched %s, "
                  "functorch %s" % (atom, c_tr, *(fmt(pt[dt][m], "%.1f") for dt in ("float64", "float32")
                                                  for m in ("batched", "functorch"))))
            print("      training iteration, C (float64) / PyTorch (float64) = %s;  C (float64) / PyTorch (float32) = %s"
                  % (fmt(ratio(c_tr, best["float64"]), "%.2f"), fmt(ratio(c_tr, best["float32"]), "%.2f")))
            if c_f32(atom) is not None:
                print("      C float build (PSF_REAL float) %.1f: C (float32) / PyTorch (float32) = %s;  C float32 / "
                      "float64 = %s" % (c_f32(atom), fmt(ratio(c_f32(atom), best["float32"]), "%.2f"),
                                        fmt(ratio(c_f32(atom), c_tr), "%.2f")))
        print("  PyTorch = its better Trainer method (and the better of %d threads and %d x one thread where measured);\n"
              "  float32 is PyTorch's fair best case (FermiNet trains in float32); C computes in float64. '-' = not "
              "measured." % (T, T))

    # ---- Metropolis sweeps, walkers in blocks against one at a time (step 2f) ----------------------------------
    mc = [(a, cval(main_b, "mcmc", T, a, 16, 256, "mcmc"), cval(main_b, "mcmc", T, a, 16, 256, "mcmc1"))
          for a in ("He", "Be", "C", "Ne")]
    mc = [m for m in mc if m[1] is not None and m[2] is not None]
    if mc:
        print("\nMetropolis sweeps (default network, B=256, %d threads, %s build; walker moves/s): the walkers in blocks "
              "through psf_model_logpsi_block against one at a time (the same chains, bit for bit):" % (T, main_b))
        for a, blk, one in mc:
            print("  %-3s blocks %.0f, one at a time %.0f: x%.2f" % (a, blk, one, blk / one))

    # ---- the targets ------------------------------------------------------------------------------------
    print("\nTargets (issues 4 and 11; measured, not asserted):")
    for build in (main_b, other_b):  # where a carbon training iteration spends its time
        parts = {m: cval(build, "table" if build == main_b else "onoff", T, "C", 16, 256, "train." + m, "us_per_walker")
                 for m in ("sample", "eloc", "backward", "optimizer")}
        if None not in parts.values():
            tot = sum(parts.values())
            opt = (C.get((build, "table" if build == main_b else "onoff", T, "C", 16, 256, "train")) or {}).get("optimizer")
            print("  carbon d=16 B=256, %s, %s: training iteration = sampling %.0f%% (target <= 20%%) + E_L %.0f%% + "
                  "gradient %.0f%% + optimizer %.0f%%" % (build, opt, *(100 * parts[m] / tot for m in
                                                                    ("sample", "eloc", "backward", "optimizer"))))
    for atom in ("He", "C"):  # whole training iterations with Adam against the PyTorch Trainer
        c_tr, pt, best = train_cmp(atom)
        if c_tr is not None:
            print("  %s d=16 B=256, %s: training iteration with Adam, C (float64) / PyTorch (float64) = %s (target >= 20; "
                  "C %.1f, PyTorch batched %s, functorch %s walkers x iterations/s)" % (
                      atom, main_b, fmt(ratio(c_tr, best["float64"]), "%.2f"), c_tr, fmt(pt["float64"]["batched"], "%.1f"),
                      fmt(pt["float64"]["functorch"], "%.1f")))
            if best["float32"] is not None:
                print("  %s d=16 B=256, %s: training iteration with Adam, C (float64) / PyTorch (float32) = %s (target "
                      ">= 20; PyTorch float32 batched %s, functorch %s walkers x iterations/s)" % (
                          atom, main_b, fmt(ratio(c_tr, best["float32"]), "%.2f"),
                          fmt(pt["float32"]["batched"], "%.1f"), fmt(pt["float32"]["functorch"], "%.1f")))
                if c_f32(atom) is not None:
                    print("  %s d=16 B=256, builtin-f32: training iteration with Adam, C (float32) / PyTorch (float32) "
                          "= %s (target >= 20; C %.1f walkers x iterations/s)" % (
                              atom, fmt(ratio(c_f32(atom), best["float32"]), "%.2f"), c_f32(atom)))
    if other_b:
        vals = {main_b: cval(main_b, "table", T, "C", 16, 256, "train"), other_b: cval(other_b, "onoff", T, "C", 16, 256, "train")}
        if vals.get("builtin") and vals.get("openblas"):
            print("  carbon d=16 B=256: training iteration, built-in loops / OpenBLAS time = %.2f (target <= 1.3)" %
                  (vals["openblas"] / vals["builtin"]))
    for hd, B in ((16, 256), (16, 1024)):
        r = next((r for r in rows if r["atom"] == "C" and r["head_dim"] == hd and r["batch"] == B), None)
        if r:
            print("  carbon d=%d B=%d, %s: C / PyTorch (best: %s) = %s (target >= 20); jet pass %s GFLOP/s = %s%% of "
                  "peak (target >= 50%%), %s%% of the FP64 FMA loop" % (
                      hd, B, main_b, r["torch_best_basis"] or "-", fmt(r["c_over_torch_best"], "%.2f"),
                      fmt(r["jet_gflops"], "%.2f"), fmt(r["jet_pct_peak"], "%.1f"), fmt(r["jet_pct_fma64"], "%.1f")))
            if r["other_eloc_wps"] is not None:
                print("  carbon d=%d B=%d, %s: C / PyTorch = %s; jet pass %s GFLOP/s = %s%% of peak" % (
                    hd, B, other_b, fmt(r["other_c_over_torch_best"], "%.2f"), fmt(r["other_jet_gflops"], "%.2f"),
                    fmt(100 * r["other_jet_gflops"] / pk if r["other_jet_gflops"] is not None and pk else None, "%.1f")))
    for build in (main_b, other_b):
        s1, s2 = cval(build, "scaling", 1, "C", 16, 256, "eloc"), cval(build, "scaling", T, "C", 16, 256, "eloc")
        if s1 and s2:
            print("  carbon d=16 B=256, %s: %d threads / 1 thread (E_L) = %.2f (target >= 1.9)" % (build, T, s2 / s1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
