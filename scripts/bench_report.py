"""Summary statistics and the markdown report of scripts/bench.

summarize() turns the raw samples (one per round) into median/min/max and
ratios; markdown() renders the report. Targets are shown as "met"/"missed"
for reading only: nothing fails on a number.
"""
import itertools
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
# The rss section runs once with the spill tier off (writers stall on the
# cap, parked) and once as mounted by default (what does not fit spills).
RSS_MODES = ["no-spill", "spill"]


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
            # Bytes per consumer call: per read(), DATA frame or on_data call.
            row["bytes_per_call"] = {c["key"]: stats([x.get("bytes_per_read")
                                                      for x in tp.get(f"{size}|{pin}|{c['key']}", [])])
                                     for c in consumers}
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
        row["vs_mkfifo"] = {c["key"]: ratio(row["files_s"][c["key"]], row["files_s"]["mkfifo"]) for c in consumers}
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
        row["p50_ratio"] = {c["key"]: ratio(row["p50_us"][c["key"]], row["p50_us"]["pipe"]) for c in consumers}
        row["p99_ratio"] = {c["key"]: ratio(row["p99_us"][c["key"]], row["p99_us"]["pipe"]) for c in consumers}
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
            row["ratios"] = {c["key"]: ratio(row["mib_s"][c["key"]], row["mib_s"]["pipe"]) for c in consumers}
            rows.append(row)
    out["scale"] = rows

    rs = results.get("rss", {})
    rows = []
    for mode, chunk, pin in itertools.product(RSS_MODES, cfg["rss"]["chunks"], ("pinned", "free")):
        got = rs.get(f"{chunk}|{pin}|{mode}")
        if not got:
            continue
        r = got[0]
        cap = parse_size(r["cap"])
        peak = r["hwm_end_kib"] * KiB
        rows.append({
            "mode": mode,
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
    def built(c):
        return bool(c.get("helper_kind"))

    if "throughput" in secs:
        lines.append("## Throughput (MiB/s; one writer process, one consumer)")
        lines.append("")
        lines.append("The read-through reader reads max(write size, 128 KiB) per call; the socket consumer "
                     "is a client process (the code of `capturefs cat`, without its stdout); the callback "
                     "consumer is bench_callback, which mounts with libcapturefs and consumes in-process. "
                     "tmpfs: write the file under /dev/shm, then read it back (not concurrent). "
                     "Target: read-through ÷ pipe, pinned.")
        lines.append("")
        header = ["write size", "CPU", "pipe", "tmpfs"]
        for c in consumers:
            header += [c["label"], "÷ pipe"]
        header += ["target"]
        rows = []
        for r in s["throughput"]:
            t = r.get("target")
            tcell = f"≥ {t['min_ratio']}×: {met(t['met'])}" if t else ""
            row = [size_label(r["size"]), r["pin"], cell(r["mib_s"]["pipe"]), cell(r["mib_s"]["tmpfs"])]
            for c in consumers:
                row += ([cell(r["mib_s"][c["key"]]), times(r["ratio_to_pipe"][c["key"]])] if built(c)
                        else [not_built, "–"])
            rows.append(row + [tcell])
        lines.append(table(header, rows))
        lines.append("")
        lines.append("Bytes per consumer call (median over rounds): per " +
                     ", per ".join(f"{c['per_call']} ({c['label']})" for c in consumers if built(c)) + ".")
        lines.append("")
        header = ["write size", "CPU"] + [f"{c['label']}: bytes/{c['per_call']}" for c in consumers if built(c)]
        rows = []
        for r in s["throughput"]:
            per = r.get("bytes_per_call", {})
            rows.append([size_label(r["size"]), r["pin"]] +
                        [size_label(round(per[c["key"]]["median"])) if per.get(c["key"]) else "–"
                         for c in consumers if built(c)])
        lines.append(table(header, rows))
        lines.append("")

    if "churn" in secs:
        lines.append("## Churn (files/s; create, write 100 B, close, consume to the end; one process)")
        lines.append("")
        tmp = meta["machine"].get("tmp_fs") or "?"
        lines.append("Read-through: open, read to EOF, close. tmpfs adds an unlink. The mkfifo recipe is mkdtemp + mkfifo + a writer thread "
                     "(100 B) + read to EOF + join + unlink + rmdir, in C: \"mkfifo /tmp\" in the temp "
                     f"directory as the recipe does (here {tmp}), \"mkfifo tmpfs\" in /dev/shm (its best "
                     "case). The ×mkfifo target is judged against the temp directory.")
        lines.append("")
        lines.append("Socket: one process creates, writes and closes each file, then takes it from the "
                     "socket (subscribed once, to all its names) up to CLOSED and acknowledges it. "
                     "Callback: one process creates, writes and closes each file, then waits until "
                     "bench_callback reports its end over a FIFO (a pipe hop the other columns do not "
                     "have). Target: read-through, pinned.")
        lines.append("")
        header = ["CPU", consumers[0]["label"], "tmpfs", "mkfifo /tmp", "mkfifo tmpfs", "÷ mkfifo /tmp",
                  "÷ mkfifo tmpfs", "÷ tmpfs"]
        for c in extra:
            header += [c["label"], "÷ mkfifo /tmp"]
        header += ["target"]
        rows = []
        for r in s["churn"]:
            t = r.get("target")
            tcell = (f"≥ {t['files_s']:,}/s and ≥ {t['vs_mkfifo']:.0f}× mkfifo: {met(t['met'])}" if t else "")
            row = [r["pin"], cell(r["files_s"]["capturefs"]), cell(r["files_s"]["tmpfs"]),
                   cell(r["files_s"]["mkfifo"]), cell(r["files_s"]["mkfifo-tmpfs"]),
                   times(r["capturefs_vs_mkfifo"]), times(r["capturefs_vs_mkfifo_tmpfs"]),
                   times(r["capturefs_vs_tmpfs"])]
            for c in extra:
                row += ([cell(r["files_s"][c["key"]]), times(r.get("vs_mkfifo", {}).get(c["key"]))] if built(c)
                        else [not_built, "–"])
            rows.append(row + [tcell])
        lines.append(table(header, rows))
        lines.append("")

    if "latency" in secs:
        lines.append("## Latency (µs, 64 B write → a waiting consumer has it)")
        lines.append("")
        lines.append("p50 and p99 are per round (thousands of samples each); cells are the median "
                     "[min–max] of those over rounds. The consumer has the bytes when read() returns "
                     "(read-through), when the DATA frame is decoded (socket), when on_data is called "
                     "(callback). Target: read-through, pinned.")
        lines.append("")
        header = ["CPU", "pipe p50", "pipe p99"]
        for c in consumers:
            short = c["label"].replace("capturefs ", "")
            header += [f"{short} p50", f"{short} p99", "÷ pipe (p50 / p99)"]
        header += ["target"]
        rows = []
        for r in s["latency"]:
            t = r.get("target")
            tcell = f"p50 ≤ {t['p50_us']:g}, p99 ≤ {t['p99_us']:g}: {met(t['met'])}" if t else ""
            row = [r["pin"], cell(r["p50_us"]["pipe"]), cell(r["p99_us"]["pipe"])]
            for c in consumers:
                k = c["key"]
                row += ([cell(r["p50_us"][k]), cell(r["p99_us"][k]),
                         f"{times(r.get('p50_ratio', {}).get(k))} / {times(r.get('p99_ratio', {}).get(k))}"]
                        if built(c) else [not_built, "–", "–"])
            rows.append(row + [tcell])
        lines.append(table(header, rows))
        lines.append("")

    if "scale" in secs:
        sz = meta["config"]["scale"]["size"]
        total = meta["config"]["scale"]["total"]
        lines.append(f"## Scale (aggregate MiB/s; N writer/consumer pairs at once, {size_label(sz)} writes, "
                     f"{size_label(total)} in all)")
        lines.append("")
        lines.append("Socket: one client process and connection per stream. Callback: one bench_callback "
                     "(2 delivery threads) takes every stream.")
        lines.append("")
        header = ["pairs", "CPU", "pipe"]
        for c in consumers:
            header += [c["label"], "÷ pipe"]
        rows = []
        for r in s["scale"]:
            row = [r["pairs"], r["pin"], cell(r["mib_s"]["pipe"])]
            for c in consumers:
                row += ([cell(r["mib_s"][c["key"]]), times(r.get("ratios", {}).get(c["key"]))] if built(c)
                        else [not_built, "–"])
            rows.append(row)
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
                     f"{RSS_TARGET_OVER_CAP_MIB} MiB. Spill tier: \"off\" is `--no-spill` (writers that do "
                     "not fit stall, each parked write holding its data outside the cap); \"on\" is the "
                     "default (what does not fit goes to the spill file).")
        lines.append("")
        header = ["spill tier", "write size", "CPU", "cap MiB", "at mount", "stalled", "peak", "peak − cap",
                  "RSS after drain", "budget used at stall", "writers done at stall", "target"]
        rows = []
        for r in s["rss"]:
            rows.append(["off" if r["mode"] == "no-spill" else "on",
                         size_label(r["chunk"]), r["pin"], num(r["cap_mib"]), num(r["mount_hwm_mib"]),
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
