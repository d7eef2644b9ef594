"""Summary statistics and the markdown report of scripts/bench.

summarize() turns the raw samples (one per round) into median/min/max and
ratios; markdown() renders the report. Targets are shown as "met"/"missed"
for reading only: nothing fails on a number.
"""
import statistics

KiB = 1024
MiB = 1024 * KiB

# Targets (aims, not assertions), all judged on the pinned runs.
TPUT_TARGET = {1 * MiB: 0.9, 128 * KiB: 0.8, 4 * KiB: 0.2}
CHURN_TARGET_FILES_S = 50_000
CHURN_TARGET_VS_FIFO = 20.0
LAT_TARGET_P50_US = 5.0
LAT_TARGET_P99_US = 20.0
RSS_TARGET_OVER_CAP_MIB = 64


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def ratio(a, b):
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


def parse_size(text):
    units = {"K": KiB, "M": MiB, "G": MiB * 1024}
    text = str(text).strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def summarize(results, cfg, consumers):
    out = {}
    kinds_tput = ["pipe", "tmpfs"] + [c["key"] for c in consumers]

    tp = results.get("throughput", {})
    rows = []
    for size, _ in cfg["throughput"]:
        for pin in ("pinned", "free"):
            row = {"size": size, "pin": pin, "mib_s": {}, "ratio_to_pipe": {}}
            for kind in kinds_tput:
                s = stats([x["mib_s"] for x in tp.get(f"{size}|{pin}|{kind}", [])])
                row["mib_s"][kind] = s
            for kind in kinds_tput:
                row["ratio_to_pipe"][kind] = ratio(row["mib_s"][kind], row["mib_s"]["pipe"])
            row["capturefs_bytes_per_read"] = stats(
                [x.get("bytes_per_read") for x in tp.get(f"{size}|{pin}|capturefs", [])])
            if pin == "pinned" and size in TPUT_TARGET:
                r = row["ratio_to_pipe"].get("capturefs")
                row["target"] = {"min_ratio": TPUT_TARGET[size],
                                 "met": None if r is None else r >= TPUT_TARGET[size]}
            rows.append(row)
    out["throughput"] = rows

    ch = results.get("churn", {})
    rows = []
    for pin in ("pinned", "free"):
        row = {"pin": pin, "files_s": {}}
        for kind in ["capturefs", "tmpfs", "mkfifo", "mkfifo-tmpfs"] + [c["key"] for c in consumers[1:]]:
            row["files_s"][kind] = stats([x["files_s"] for x in ch.get(f"{pin}|{kind}", [])])
        row["capturefs_vs_mkfifo"] = ratio(row["files_s"]["capturefs"], row["files_s"]["mkfifo"])
        row["capturefs_vs_mkfifo_tmpfs"] = ratio(row["files_s"]["capturefs"], row["files_s"]["mkfifo-tmpfs"])
        row["capturefs_vs_tmpfs"] = ratio(row["files_s"]["capturefs"], row["files_s"]["tmpfs"])
        if pin == "pinned":
            c = row["files_s"]["capturefs"]
            v = row["capturefs_vs_mkfifo"]
            row["target"] = {
                "files_s": CHURN_TARGET_FILES_S, "vs_mkfifo": CHURN_TARGET_VS_FIFO,
                "met": None if c is None or v is None else
                c["median"] >= CHURN_TARGET_FILES_S and v >= CHURN_TARGET_VS_FIFO}
        rows.append(row)
    out["churn"] = rows

    la = results.get("latency", {})
    rows = []
    for pin in ("pinned", "free"):
        row = {"pin": pin, "p50_us": {}, "p99_us": {}}
        for kind in ["pipe"] + [c["key"] for c in consumers]:
            samples = la.get(f"{pin}|{kind}", [])
            row["p50_us"][kind] = stats([x["p50_us"] for x in samples])
            row["p99_us"][kind] = stats([x["p99_us"] for x in samples])
        row["p50_ratio_to_pipe"] = ratio(row["p50_us"]["capturefs"], row["p50_us"]["pipe"])
        row["p99_ratio_to_pipe"] = ratio(row["p99_us"]["capturefs"], row["p99_us"]["pipe"])
        if pin == "pinned":
            p50, p99 = row["p50_us"]["capturefs"], row["p99_us"]["capturefs"]
            row["target"] = {"p50_us": LAT_TARGET_P50_US, "p99_us": LAT_TARGET_P99_US,
                             "met": None if p50 is None or p99 is None else
                             p50["median"] <= LAT_TARGET_P50_US and p99["median"] <= LAT_TARGET_P99_US}
        rows.append(row)
    out["latency"] = rows

    sc = results.get("scale", {})
    rows = []
    for pairs in cfg["scale"]["pairs"]:
        for pin in ("pinned", "free"):
            row = {"pairs": pairs, "pin": pin, "mib_s": {}}
            for kind in ["pipe"] + [c["key"] for c in consumers]:
                row["mib_s"][kind] = stats([x["mib_s"] for x in sc.get(f"{pairs}|{pin}|{kind}", [])])
            row["ratio_to_pipe"] = ratio(row["mib_s"]["capturefs"], row["mib_s"]["pipe"])
            rows.append(row)
    out["scale"] = rows

    rs = results.get("rss", {})
    rows = []
    for chunk in cfg["rss"]["chunks"]:
        for pin in ("pinned", "free"):
            got = rs.get(f"{chunk}|{pin}")
            if not got:
                continue
            r = got[0]
            cap = parse_size(r["cap"])
            peak = r["hwm_end_kib"] * KiB
            rows.append({
                "chunk": chunk, "pin": pin, "streams": r["streams"], "per_stream": r["per_stream"],
                "cap_mib": cap / MiB, "mount_hwm_mib": (r.get("hwm_mount_kib") or 0) / KiB,
                "stalled_hwm_mib": r["hwm_stalled_kib"] / KiB, "peak_mib": peak / MiB,
                "rss_after_drain_mib": r["rss_end_kib"] / KiB,
                "over_cap_mib": (peak - cap) / MiB, "budget_used_at_stall_mib": r["budget_used_at_stall"] / MiB,
                "writers_done_at_stall": r["writers_done_at_stall"], "drain_seconds": r["drain_seconds"],
                "target_over_cap_mib": RSS_TARGET_OVER_CAP_MIB,
                "met": (peak - cap) / MiB <= RSS_TARGET_OVER_CAP_MIB,
            })
    out["rss"] = rows

    mi = results.get("micro", {})
    rows = []
    for name, reps in mi.items():
        rows.append({
            "name": name,
            "ns_per_op": stats([x["ns_per_op"] for x in reps]),
            "cpu_ns_per_op": stats([x["cpu_ns_per_op"] for x in reps]),
            "bytes_per_second": stats([x["bytes_per_second"] for x in reps]),
            "items_per_second": stats([x["items_per_second"] for x in reps]),
        })
    out["micro"] = rows
    out["micro_note"] = results.get("micro_note")
    return out


# ---------------------------------------------------------------------------
# Rendering


def num(v):
    if v is None:
        return "–"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(s):
    if s is None:
        return "–"
    if s["n"] == 1:
        return num(s["median"])
    return f"{num(s['median'])} [{num(s['min'])}–{num(s['max'])}]"


def times(r):
    return "–" if r is None else f"{r:.2f}×"


def met(flag):
    return "–" if flag is None else ("met" if flag else "**missed**")


def size_label(n):
    if n >= MiB and n % MiB != 0:
        return f"{n / MiB:.2f} MiB"
    if n >= KiB and n % KiB != 0:
        return f"{n / KiB:.1f} KiB"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} B"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def markdown(meta, s, consumers, not_built):
    m = meta["machine"]
    lines = []
    lines.append(f"# capturefs benchmark{' (quick: harness check only, numbers meaningless)' if meta['quick'] else ''}")
    lines.append("")
    lines.append(f"- command: `{meta['command']}` — {meta['rounds']} interleaved round(s), "
                 f"{meta['seconds']} s; cells are median [min–max] over rounds")
    lines.append(f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, kernel {m['kernel']}, "
                 f"{m['ram_gib']} GiB RAM, virt: {m['virt'] or 'none detected'}; libfuse {m['fuse']}")
    lines.append(f"- capturefs: {m['capturefs_version']} built from {m['source_dir']} at "
                 f"{m['git_commit'] or '?'}{' + uncommitted changes in src/' if m['git_dirty'] else ''}")
    lb = meta["loadavg_before"]
    bg = meta.get("background_cpu_pct") or []
    noise = f"load average {lb[0]:.2f} at start"
    if bg:
        noise += (f"; other work used {statistics.median(bg):.0f}% of the CPUs (median; max {max(bg):.0f}%) "
                  "in 0.5 s idle samples before each round")
    lines.append(f"- noise: {noise}")
    lines.append("- pinned: `taskset -c 0` for the daemon, writers and readers; free: no affinity. "
                 "Ratios: median ÷ median of the pipe in the same mode.")
    aff = meta.get("daemon_affinity") or {}
    if aff:
        lines.append("- daemon CPUs checked: " + ", ".join(f"{k} {v}" for k, v in aff.items()))
    if meta["errors"]:
        lines.append(f"- **{len(meta['errors'])} measurement error(s)**: " + "; ".join(meta["errors"])[:2000])
    lines.append("")

    secs = meta["sections"]
    extra = consumers[1:]
    if "throughput" in secs:
        lines.append("## Throughput (MiB/s; one writer process, one reader process)")
        lines.append("")
        lines.append("Reader reads max(write size, 128 KiB) per call. tmpfs: write the file under "
                     "/dev/shm, then read it back (not concurrent). Target: capturefs ÷ pipe, pinned.")
        lines.append("")
        header = ["write size", "CPU", "pipe", "tmpfs", f"{consumers[0]['label']}", "÷ pipe",
                  "capturefs bytes/read"] + [c["label"] for c in extra] + ["target"]
        rows = []
        for r in s["throughput"]:
            t = r.get("target")
            tcell = f"≥ {t['min_ratio']}×: {met(t['met'])}" if t else ""
            rows.append([size_label(r["size"]), r["pin"], cell(r["mib_s"]["pipe"]), cell(r["mib_s"]["tmpfs"]),
                         cell(r["mib_s"]["capturefs"]), times(r["ratio_to_pipe"]["capturefs"]),
                         size_label(round(r["capturefs_bytes_per_read"]["median"]))
                         if r["capturefs_bytes_per_read"] else "–"] +
                        [cell(r["mib_s"][c["key"]]) if r["mib_s"][c["key"]] else not_built for c in extra] +
                        [tcell])
        lines.append(table(header, rows))
        lines.append("")

    if "churn" in secs:
        lines.append("## Churn (files/s; create, write 100 B, close, open, read to EOF, close; one process)")
        lines.append("")
        tmp = meta["machine"].get("tmp_fs") or "?"
        lines.append("tmpfs adds an unlink. The mkfifo recipe is mkdtemp + mkfifo + a writer thread "
                     "(100 B) + read to EOF + join + unlink + rmdir, in C: \"mkfifo /tmp\" in the temp "
                     f"directory as the recipe does (here {tmp}), \"mkfifo tmpfs\" in /dev/shm (its best "
                     "case). The ×mkfifo target is judged against the temp directory.")
        lines.append("")
        header = ["CPU", "capturefs", "tmpfs", "mkfifo /tmp", "mkfifo tmpfs", "÷ mkfifo /tmp",
                  "÷ mkfifo tmpfs", "÷ tmpfs"] + [c["label"] for c in extra] + ["target"]
        rows = []
        for r in s["churn"]:
            t = r.get("target")
            tcell = (f"≥ {t['files_s']:,}/s and ≥ {t['vs_mkfifo']:.0f}× mkfifo: {met(t['met'])}" if t else "")
            rows.append([r["pin"], cell(r["files_s"]["capturefs"]), cell(r["files_s"]["tmpfs"]),
                         cell(r["files_s"]["mkfifo"]), cell(r["files_s"]["mkfifo-tmpfs"]),
                         times(r["capturefs_vs_mkfifo"]), times(r["capturefs_vs_mkfifo_tmpfs"]),
                         times(r["capturefs_vs_tmpfs"])] +
                        [cell(r["files_s"][c["key"]]) if r["files_s"][c["key"]] else not_built for c in extra] +
                        [tcell])
        lines.append(table(header, rows))
        lines.append("")

    if "latency" in secs:
        lines.append("## Latency (µs, 64 B write → a reader blocked in read() has it)")
        lines.append("")
        lines.append("p50 and p99 are per round (thousands of samples each); cells are the median "
                     "[min–max] of those over rounds.")
        lines.append("")
        header = ["CPU", "pipe p50", "pipe p99", "capturefs p50", "capturefs p99", "p50 ÷ pipe",
                  "p99 ÷ pipe"] + [c["label"] for c in extra] + ["target"]
        rows = []
        for r in s["latency"]:
            t = r.get("target")
            tcell = f"p50 ≤ {t['p50_us']:g}, p99 ≤ {t['p99_us']:g}: {met(t['met'])}" if t else ""
            rows.append([r["pin"], cell(r["p50_us"]["pipe"]), cell(r["p99_us"]["pipe"]),
                         cell(r["p50_us"]["capturefs"]), cell(r["p99_us"]["capturefs"]),
                         times(r["p50_ratio_to_pipe"]), times(r["p99_ratio_to_pipe"])] +
                        [cell(r["p50_us"][c["key"]]) if r["p50_us"][c["key"]] else not_built for c in extra] +
                        [tcell])
        lines.append(table(header, rows))
        lines.append("")

    if "scale" in secs:
        sz = meta["config"]["scale"]["size"]
        total = meta["config"]["scale"]["total"]
        lines.append(f"## Scale (aggregate MiB/s; N writer/reader pairs at once, {size_label(sz)} writes, "
                     f"{size_label(total)} in all)")
        lines.append("")
        header = ["pairs", "CPU", "pipe", "capturefs", "÷ pipe"] + [c["label"] for c in extra]
        rows = []
        for r in s["scale"]:
            rows.append([r["pairs"], r["pin"], cell(r["mib_s"]["pipe"]), cell(r["mib_s"]["capturefs"]),
                         times(r["ratio_to_pipe"])] +
                        [cell(r["mib_s"][c["key"]]) if r["mib_s"][c["key"]] else not_built for c in extra])
        lines.append(table(header, rows))
        lines.append("")

    if "rss" in secs:
        c = meta["config"]["rss"]
        lines.append(f"## Daemon peak RSS ({c['streams']:,} streams × {size_label(c['per_stream'])}, "
                     f"no reader until the writers stall, --max-memory {c['cap']})")
        lines.append("")
        lines.append("MiB. VmHWM of the daemon after mounting, once every writer is finished or parked "
                     "(RSS stable for a while: \"stalled\"), and at the end (\"peak\"), after 1,000 "
                     "concurrent readers drained every stream; VmRSS after the drain. Target: peak ≤ cap + "
                     f"{RSS_TARGET_OVER_CAP_MIB} MiB.")
        lines.append("")
        header = ["write size", "CPU", "cap MiB", "at mount", "stalled", "peak", "peak − cap",
                  "RSS after drain", "budget used at stall", "writers done at stall", "target"]
        rows = []
        for r in s["rss"]:
            rows.append([size_label(r["chunk"]), r["pin"], num(r["cap_mib"]), num(r["mount_hwm_mib"]),
                         num(r["stalled_hwm_mib"]), num(r["peak_mib"]), num(r["over_cap_mib"]),
                         num(r["rss_after_drain_mib"]),
                         num(r["budget_used_at_stall_mib"]), f"{r['writers_done_at_stall']}/{r['streams']}",
                         met(r["met"])])
        lines.append(table(header, rows))
        lines.append("")

    if "micro" in secs:
        lines.append("## Core micro-benchmarks (tests/bench/bench_core, pinned to CPU 0)")
        lines.append("")
        if not s["micro"]:
            lines.append(f"not run: {s.get('micro_note') or 'see errors above'}")
        else:
            lines.append("CPU time per operation (robust to other work on a shared machine), wall time, "
                         "and Google Benchmark's rates (per CPU second).")
            lines.append("")
            header = ["benchmark", "CPU ns/op", "wall ns/op", "rate"]
            rows = []
            for r in s["micro"]:
                tp = []
                if r["bytes_per_second"]:
                    tp.append(f"{r['bytes_per_second']['median'] / MiB:,.0f} MiB/s")
                if r["items_per_second"]:
                    tp.append(f"{r['items_per_second']['median'] / 1e3:,.0f} k/s")
                rows.append([r["name"], cell(r["cpu_ns_per_op"]), num(r["ns_per_op"]["median"]),
                             ", ".join(tp)])
            lines.append(table(header, rows))
        lines.append("")
    return "\n".join(lines)
