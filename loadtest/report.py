#!/usr/bin/env python3
"""Summarises a load-test run directory written by run.sh.

    report.py RESULTS_DIR [--check]

Writes summary.json, summary.md and latency.svg into RESULTS_DIR. Every
figure is the median over rounds with min and max beside it; ratios compare
targets measured in the same run. With --check (CI's --quick mode) it exits
non-zero if any run saw an error or zero throughput.
"""
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict

TARGET_ORDER = ["ringgate", "ringgate-log", "ringgate-limited", "ringgate-node", "ringgate-capped", "ringgate-open", "ringgate-auth", "ringgate-cache", "ringgate-proxied", "ringgate-direct", "ringgate-plain", "ringgate-cors", "ringgate-iprule", "ringgate-gzip", "ringgate-br", "ringgate-aggregate", "nginx", "nginx-cache", "haproxy", "l4", "direct"]
PERCENTILES = ["p50", "p90", "p99", "p99.9"]


def parse_duration(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text.strip())
    if not m:
        return None
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def parse_wrk(text):
    result = {"errors": 0, "latency": {}}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    result["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", text)
    result["requests"] = int(m.group(1)) if m else 0
    result["elapsed"] = parse_duration(m.group(2) + m.group(3)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        result["errors"] += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["non2xx"] = int(m.group(1)) if m else 0
    result["errors"] += result["non2xx"]
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M):
        seconds = parse_duration(value)
        if seconds is not None:
            result["latency"]["p" + pct] = seconds
    return result


def parse_oha(text):
    data = json.loads(text)
    summary = data.get("summary", {})
    codes = data.get("statusCodeDistribution", {}) or {}
    errors = data.get("errorDistribution", {}) or {}
    ok = sum(v for k, v in codes.items() if str(k).startswith(("2", "3")))
    bad = sum(v for k, v in codes.items() if not str(k).startswith(("2", "3")))
    latency = {}
    for key, value in (data.get("latencyPercentiles") or {}).items():
        if value is not None:
            latency[key] = float(value)
    # Requests still in flight when the duration ends are cut off by oha
    # itself ("aborted due to deadline"); they are not the target's errors.
    real_errors = sum(v for k, v in errors.items() if "deadline" not in k)
    return {
        "rps": float(summary.get("requestsPerSec") or 0.0),
        "requests": ok + bad,
        "errors": bad + real_errors,
        "latency": latency,
    }


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta


def load_runs(raw_dir):
    runs = []
    for name in sorted(os.listdir(raw_dir)):
        if not name.endswith(".meta"):
            continue
        base = os.path.join(raw_dir, name[: -len(".meta")])
        meta = read_meta(base + ".meta")
        try:
            if meta.get("tool") == "oha":
                with open(base + ".json") as f:
                    parsed = parse_oha(f.read())
            else:
                with open(base + ".txt") as f:
                    parsed = parse_wrk(f.read())
        except (OSError, ValueError) as e:
            parsed = {"rps": 0.0, "requests": 0, "errors": 1, "latency": {}, "parse_error": str(e)}
        ticks = int(meta.get("cpu_ticks") or 0)
        clk = int(meta.get("clk_tck") or 100)
        parsed["cpu_seconds"] = ticks / clk
        parsed["cpu_us_per_request"] = (ticks / clk * 1e6 / parsed["requests"]) if parsed["requests"] else None
        if meta.get("limit_rate") and parsed.get("elapsed"):
            # 429s are this scenario's point, not errors: what counts is how
            # many requests got through against what the limit allows.
            admitted = parsed["requests"] - parsed.get("non2xx", 0)
            allowed = int(meta.get("limit_burst") or 0) + float(meta["limit_rate"]) * parsed["elapsed"]
            parsed["errors"] -= parsed.get("non2xx", 0)
            parsed["admitted"] = admitted
            parsed["allowed"] = allowed
            parsed["admitted_of_allowed"] = admitted / allowed if allowed else None
        if meta.get("cache_hits") is not None and meta.get("cache_misses") is not None:
            hits, misses = int(meta["cache_hits"]), int(meta["cache_misses"])
            parsed["cache_hit_ratio"] = hits / (hits + misses) if hits + misses else None
        idle = int(meta.get("idle_connections") or 0)
        if idle and meta.get("rss_before_kib") and meta.get("rss_after_kib"):
            delta = int(meta["rss_after_kib"]) - int(meta["rss_before_kib"])
            parsed["rss_per_idle_connection_bytes"] = delta * 1024 / idle
        parsed.update({k: meta.get(k) for k in ("scenario", "target", "round", "description", "body_kib")})
        runs.append(parsed)
    return runs


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs):
    grouped = defaultdict(lambda: defaultdict(list))
    descriptions = {}
    for r in runs:
        grouped[r["scenario"]][r["target"]].append(r)
        descriptions[r["scenario"]] = r.get("description") or ""
    summary = {}
    for scenario, targets in grouped.items():
        entry = {"description": descriptions[scenario], "targets": {}}
        kib = next((r.get("body_kib") for rs in targets.values() for r in rs if r.get("body_kib")), None)
        if kib:
            entry["body_kib"] = float(kib)
        for target, rs in targets.items():
            t = {
                "rps": stats([r["rps"] for r in rs]),
                "cpu_us_per_request": stats([r["cpu_us_per_request"] for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "requests": sum(r["requests"] for r in rs),
                "latency": {p: stats([r["latency"].get(p) for r in rs]) for p in PERCENTILES + ["p75"]},
            }
            hit_ratio = stats([r.get("cache_hit_ratio") for r in rs])
            if hit_ratio:
                t["cache_hit_ratio"] = hit_ratio
            admitted = stats([r.get("admitted_of_allowed") for r in rs])
            if admitted:
                t["admitted_of_allowed"] = admitted
                t["limit_rounds"] = [
                    {k: r.get(k) for k in ("round", "admitted", "allowed", "elapsed", "non2xx")}
                    for r in rs
                ]
            # Only the first round sees a fresh process: later rounds reuse
            # memory the allocator kept from the first, so take the maximum.
            rss = stats([r.get("rss_per_idle_connection_bytes") for r in rs])
            if rss:
                rss["median"] = rss["max"]
                t["rss_per_idle_connection_bytes"] = rss
            entry["targets"][target] = t
        rg = entry["targets"].get("ringgate")
        ratios = {}
        if rg and rg["rps"]:
            for peer in ("nginx", "haproxy", "l4", "direct"):
                p = entry["targets"].get(peer)
                if p and p["rps"] and p["rps"]["median"]:
                    ratios[f"throughput_vs_{peer}"] = rg["rps"]["median"] / p["rps"]["median"]
                if p and p["cpu_us_per_request"] and rg["cpu_us_per_request"] and p["cpu_us_per_request"]["median"]:
                    ratios[f"cpu_per_request_vs_{peer}"] = rg["cpu_us_per_request"]["median"] / p["cpu_us_per_request"]["median"]
        log_target = entry["targets"].get("ringgate-log")
        if rg and rg["rps"] and log_target and log_target["rps"]:
            ratios["access_log_throughput_cost"] = 1 - log_target["rps"]["median"] / rg["rps"]["median"]
        limited = entry["targets"].get("ringgate-limited")
        if rg and rg["rps"] and limited and limited["rps"]:
            ratios["rate_limit_throughput_cost"] = 1 - limited["rps"]["median"] / rg["rps"]["median"]
        node = entry["targets"].get("ringgate-node")
        if rg and rg["rps"] and node and node["rps"]:
            ratios["node_rate_limit_throughput_cost"] = 1 - node["rps"]["median"] / rg["rps"]["median"]
        auth = entry["targets"].get("ringgate-auth")
        open_route = entry["targets"].get("ringgate-open")
        if open_route and open_route["rps"] and auth and auth["rps"]:
            ratios["auth_throughput_cost"] = 1 - auth["rps"]["median"] / open_route["rps"]["median"]
            if open_route["cpu_us_per_request"] and auth["cpu_us_per_request"]:
                ratios["auth_cpu_per_request_vs_unprotected"] = auth["cpu_us_per_request"]["median"] / open_route["cpu_us_per_request"]["median"]
        cached = entry["targets"].get("ringgate-cache")
        if cached and cached["rps"]:
            for twin, name in (("ringgate-proxied", "proxied"), ("ringgate-direct", "direct_response"), ("nginx-cache", "nginx_cache")):
                t = entry["targets"].get(twin)
                if t and t["rps"] and t["rps"]["median"]:
                    ratios[f"cache_throughput_vs_{name}"] = cached["rps"]["median"] / t["rps"]["median"]
                if t and t["cpu_us_per_request"] and cached["cpu_us_per_request"] and t["cpu_us_per_request"]["median"]:
                    ratios[f"cache_cpu_per_request_vs_{name}"] = cached["cpu_us_per_request"]["median"] / t["cpu_us_per_request"]["median"]
            if cached.get("cache_hit_ratio"):
                ratios["cache_hit_ratio_share"] = cached["cache_hit_ratio"]["median"]
        plain = entry["targets"].get("ringgate-plain")
        for twin, name in (("ringgate-cors", "cors"), ("ringgate-iprule", "ip_rule"), ("ringgate-gzip", "gzip"), ("ringgate-br", "brotli"), ("ringgate-aggregate", "aggregate_of_3")):
            t = entry["targets"].get(twin)
            if plain and plain["rps"] and t and t["rps"]:
                ratios[f"{name}_throughput_cost"] = 1 - t["rps"]["median"] / plain["rps"]["median"]
                if plain["cpu_us_per_request"] and t["cpu_us_per_request"]:
                    ratios[f"{name}_cpu_per_request_vs_plain"] = t["cpu_us_per_request"]["median"] / plain["cpu_us_per_request"]["median"]
        # Compression: the CPU it adds per KiB of the uncompressed body.
        kib = entry.get("body_kib")
        for twin, name in (("ringgate-gzip", "gzip"), ("ringgate-br", "brotli")):
            t = entry["targets"].get(twin)
            if kib and plain and t and plain["cpu_us_per_request"] and t["cpu_us_per_request"]:
                ratios[f"{name}_cpu_us_per_kib"] = (t["cpu_us_per_request"]["median"] - plain["cpu_us_per_request"]["median"]) / kib
        capped = entry["targets"].get("ringgate-capped")
        if capped and capped.get("admitted_of_allowed"):
            ratios["admitted_of_allowed_share"] = capped["admitted_of_allowed"]["median"]
        entry["ratios"] = ratios
        summary[scenario] = entry
    return summary


def fmt_rps(s):
    return "—" if not s else f"{s['median']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f})"


def fmt_us(s):
    return "—" if not s else f"{s['median']:.1f}"


def fmt_latency(s):
    if not s:
        return "—"
    v = s["median"]
    return f"{v * 1e6:.0f} µs" if v < 1e-3 else f"{v * 1e3:.2f} ms"


def markdown(summary, env):
    lines = ["# Load-test results", ""]
    if env:
        lines.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
        lines.append("")
    lines.append("Medians over rounds (min–max in brackets). Ratios are ringgate ÷ peer, from the same run.")
    lines.append("")
    for scenario, entry in summary.items():
        lines += [f"## {scenario}", "", entry["description"], ""]
        lines.append("| target | req/s | CPU µs/req | p50 | p90 | p99 | p99.9 | errors | RSS/idle conn |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for target in TARGET_ORDER:
            t = entry["targets"].get(target)
            if not t:
                continue
            lat = t["latency"]
            rss = t.get("rss_per_idle_connection_bytes")
            rss_text = "—" if not rss else f"{rss['median']:,.0f} B"
            lines.append(
                f"| {target} | {fmt_rps(t['rps'])} | {fmt_us(t['cpu_us_per_request'])} | "
                f"{fmt_latency(lat.get('p50'))} | {fmt_latency(lat.get('p90'))} | {fmt_latency(lat.get('p99'))} | "
                f"{fmt_latency(lat.get('p99.9'))} | {t['errors']} | {rss_text} |"
            )
        capped = entry["targets"].get("ringgate-capped")
        if capped and capped.get("admitted_of_allowed"):
            for r in capped["limit_rounds"]:
                lines.append(
                    f"Round {r.get('round')}: admitted {r['admitted']:,} of {r['allowed']:,.0f} allowed "
                    f"({r['admitted'] / r['allowed'] * 100:.2f}%) in {r['elapsed']:.2f} s; "
                    f"{r.get('non2xx', 0):,} refused with 429"
                )
        if entry["ratios"]:
            lines.append("")
            lines.append("Ratios: " + ", ".join(
                f"{k.replace('_', ' ')} **{v * 100:.1f}%**" if k.endswith("_cost") else f"{k.replace('_', ' ')} **{v * 100:.2f}%**" if k.endswith("_share") else f"{k.replace('_', ' ')} **{v:.2f}**"
                for k, v in entry["ratios"].items()))
        lines.append("")
    return "\n".join(lines)


def svg_latency(summary):
    """Grouped bars of latency percentiles per target for the latency
    scenario (or the first scenario with percentiles), log-scaled."""
    preferred = [s for s in ("latency", "small-get") if s in summary]
    scenario = preferred[0] if preferred else next(iter(summary), None)
    if scenario is None:
        return None
    targets = [t for t in TARGET_ORDER if t in summary[scenario]["targets"]]
    values = {
        t: [(summary[scenario]["targets"][t]["latency"].get(p) or {}).get("median") for p in PERCENTILES] for t in targets
    }
    flat = [v for vs in values.values() for v in vs if v]
    if not flat:
        return None
    lo = 10 ** math.floor(math.log10(min(flat)))
    hi = 10 ** math.ceil(math.log10(max(flat)))
    width, height, left, bottom, top = 760, 380, 70, 50, 40
    plot_w, plot_h = width - left - 20, height - bottom - top
    colours = {"ringgate": "#d9480f", "ringgate-log": "#f08c00", "ringgate-limited": "#e8590c", "ringgate-node": "#c2255c", "ringgate-capped": "#862e9c", "ringgate-auth": "#5f3dc4", "ringgate-open": "#9775fa", "ringgate-cache": "#e67700", "ringgate-proxied": "#ffa94d", "ringgate-direct": "#ffd8a8", "ringgate-plain": "#495057", "ringgate-cors": "#0b7285", "ringgate-iprule": "#5c940d", "nginx": "#2b8a3e", "nginx-cache": "#69db7c", "haproxy": "#1864ab", "l4": "#868e96", "direct": "#adb5bd"}

    def y(v):
        return top + plot_h - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">Latency percentiles — {scenario} (log scale, lower is better)</text>',
    ]
    decade = lo
    while decade <= hi * 1.0001:
        yy = y(decade)
        label = f"{decade * 1e6:g} µs" if decade < 1e-3 else f"{decade * 1e3:g} ms"
        out.append(f'<line x1="{left}" x2="{width - 20}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#dee2e6"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
        decade *= 10
    group_w = plot_w / len(PERCENTILES)
    bar_w = group_w * 0.8 / max(1, len(targets))
    for i, p in enumerate(PERCENTILES):
        gx = left + i * group_w + group_w * 0.1
        out.append(f'<text x="{left + i * group_w + group_w / 2:.1f}" y="{height - bottom + 18}" text-anchor="middle">{p}</text>')
        for j, t in enumerate(targets):
            v = values[t][i]
            if not v:
                continue
            x = gx + j * bar_w
            yy = y(v)
            out.append(f'<rect x="{x:.1f}" y="{yy:.1f}" width="{bar_w * 0.92:.1f}" height="{top + plot_h - yy:.1f}" fill="{colours.get(t, "#495057")}"><title>{t} {p}: {fmt_latency({"median": v})}</title></rect>')
    for j, t in enumerate(targets):
        out.append(f'<rect x="{left + j * 110}" y="{height - 20}" width="12" height="12" fill="{colours.get(t, "#495057")}"/>')
        out.append(f'<text x="{left + j * 110 + 16}" y="{height - 10}">{t}</text>')
    out.append("</svg>")
    return "\n".join(out)


def worker_counts(log_path):
    """Per-worker request counts from ringgate's drain log lines, which show
    how evenly SO_REUSEPORT spread connections across workers."""
    counts = {}
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                m = re.search(r"worker drained worker=(\d+) requests=(\d+)", line)
                if m:
                    counts[int(m.group(1))] = int(m.group(2))
    return counts


def read_env(out_dir):
    path = os.path.join(out_dir, "environment.txt")
    return read_meta(path) if os.path.exists(path) else {}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    check = "--check" in sys.argv
    out_dir = args[0]
    raw = os.path.join(out_dir, "raw")
    sections = {}
    scaling_dirs = sorted((d for d in os.listdir(raw) if d.startswith("workers-")), key=lambda d: int(d.split("-")[1]))
    if scaling_dirs:
        for d in scaling_dirs:
            sections[d] = summarise(load_runs(os.path.join(raw, d)))
    else:
        sections[""] = summarise(load_runs(raw))
    env = read_env(out_dir)
    order = [s for s in env.get("scenarios", "").split(",") if s]
    rank = {s: i for i, s in enumerate(order)}
    for name in sections:
        sections[name] = dict(sorted(sections[name].items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
    spread = {}
    for name in sections:
        log = os.path.join(out_dir, "run", name, "ringgate.log") if name else os.path.join(out_dir, "run", "ringgate.log")
        counts = worker_counts(log)
        if counts:
            spread[name or "run"] = counts

    md = []
    for name, summary in sections.items():
        if name:
            md.append(f"# {name}\n")
        md.append(markdown(summary, env))
    if scaling_dirs:
        md.append(scaling_table(sections))
    for name, counts in spread.items():
        md.append(f"Requests per ringgate worker ({name}): " + ", ".join(f"w{k} {v:,}" for k, v in sorted(counts.items())) + "\n")
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({"environment": env, "results": sections, "requests_per_worker": spread}, f, indent=2)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    svg = svg_latency(next(iter(sections.values())))
    if svg:
        with open(os.path.join(out_dir, "latency.svg"), "w") as f:
            f.write(svg)
    print("\n".join(md))
    if check:
        failures = []
        for name, summary in sections.items():
            for scenario, entry in summary.items():
                for target, t in entry["targets"].items():
                    if t["errors"]:
                        failures.append(f"{name}{scenario}/{target}: {t['errors']} errors")
                    if not t["rps"] or t["rps"]["median"] <= 0:
                        failures.append(f"{name}{scenario}/{target}: no throughput")
        if failures:
            print("LOAD-TEST CHECK FAILED:\n  " + "\n  ".join(failures))
            sys.exit(1)
        print("load-test check: every scenario ran with zero errors and non-zero throughput")


def scaling_table(sections):
    lines = ["# Scaling", "", "| workers | target | small-get req/s | CPU µs/req | efficiency vs 1 worker |", "|---|---|---|---|---|"]
    base = {}
    for name, summary in sections.items():
        w = int(name.split("-")[1])
        entry = summary.get("small-get")
        if not entry:
            continue
        for target in TARGET_ORDER:
            t = entry["targets"].get(target)
            if not t or not t["rps"]:
                continue
            rps = t["rps"]["median"]
            if w == 1:
                base[target] = rps
            eff = f"{rps / (w * base[target]):.2f}" if target in base and base[target] else "—"
            lines.append(f"| {w} | {target} | {rps:,.0f} | {fmt_us(t['cpu_us_per_request'])} | {eff} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
