#!/usr/bin/env python3
"""Energy trace vs wall-clock time from train_stats.csv files (psiformer's --out DIR), as a Markdown table.

Each row is a time window; each cell the mean training energy (Ha) of the iterations in it, with the iteration
count. Training energies are measured on the walkers the optimizer is fitting, so they run below the evaluated
(frozen-parameter) energy; compare them between runs, not with the exact value.

    python3 bench/trace.py --window 3 kfac=runs/c_kfac adam=runs/c_adam
"""
import argparse
import csv
import os


def load(path):
    rows = []
    with open(os.path.join(path, "train_stats.csv")) as f:
        for r in csv.DictReader(f):
            rows.append((float(r["seconds"]), float(r["energy"])))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=3.0, help="minutes per row")
    ap.add_argument("runs", nargs="+", help="label=DIR")
    a = ap.parse_args()
    runs = [(s.split("=", 1)[0], load(s.split("=", 1)[1])) for s in a.runs]
    end = max(r[-1][0] for _, r in runs if r)
    w = 60.0 * a.window
    print("| minutes | " + " | ".join(f"{lab}: mean E (Ha), iterations" for lab, _ in runs) + " |")
    print("|---|" + "---|" * len(runs))
    t = 0.0
    while t < end:
        cells = []
        for _, rows in runs:
            e = [en for (s, en) in rows if t <= s < t + w]
            cells.append(f"{sum(e) / len(e):.4f} ({len(e)})" if e else "–")
        print(f"| {t / 60:.0f}–{(t + w) / 60:.0f} | " + " | ".join(cells) + " |")
        t += w


if __name__ == "__main__":
    main()
