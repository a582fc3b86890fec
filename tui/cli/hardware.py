"""`edge-audit device` and `edge-audit profile`: what this device is, and what a model costs on it."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from audit.profile import PROBE_ITEMS, ProfileSettings, profile_model
from hardware.device import device_report
from tui.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    device = sub.add_parser("device", help="what this device is and what it is doing now")
    device.add_argument(
        "--libraries", action="store_true",
        help="also load torch and ONNX Runtime to show their threads and providers (takes seconds)",
    )
    common.add_json_option(device)
    device.set_defaults(func=cmd_device)

    profile = sub.add_parser(
        "profile",
        help="latency, tokens/s and memory of a model on this device",
        description="Warm-up runs, then timed runs of a forced-length generation and of BBQ-style "
        "probe items; prints p50/p95/p99 with the sample counts, RSS and size on disk.",
    )
    common.add_model_options(profile)
    profile.add_argument("--prompt-tokens", type=int, default=128, help="prompt length in tokens (default 128)")
    profile.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (default 32)")
    profile.add_argument("--runs", type=int, default=10, help="timed runs (default 10)")
    profile.add_argument("--warmup-runs", type=int, default=2, help="untimed runs first (default 2)")
    profile.add_argument(
        "--probe-items", type=int, default=len(PROBE_ITEMS), help=f"probe items timed per run, 0 to {len(PROBE_ITEMS)}"
    )
    common.add_json_option(profile)
    profile.set_defaults(func=cmd_profile)


def _value(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value}{unit}"


def cmd_device(args: argparse.Namespace) -> int:
    data = device_report(libraries=args.libraries)

    def human(d: dict[str, Any]) -> None:
        table = Table(title=d["device"]["name"], show_header=False)
        table.add_column("fact", style="bold")
        table.add_column("value")
        cpu, memory, freq, software = d["cpu"], d["memory"], d["cpu_frequency"], d["os"]
        rows = [
            ("kind", d["device"]["kind"]),
            ("architecture", _value(cpu["architecture"])),
            ("CPU", _value(cpu["model"])),
            ("cores", f"{_value(cpu['cores_logical'])} logical, {_value(cpu['cores_physical'])} physical, "
                      f"{_value(cpu['cores_usable'])} usable"),
            ("CPU frequency", f"{_value(freq['mean_mhz'], ' MHz')} (max {_value(freq['max_mhz'], ' MHz')}, "
                              f"governor {_value(freq['governor'])})"),
            ("RAM", f"{_value(memory['available_mb'], ' MB')} available of {_value(memory['total_mb'], ' MB')}"),
            ("swap", f"{_value(memory['swap_free_mb'], ' MB')} free of {_value(memory['swap_total_mb'], ' MB')}"),
            ("temperatures", ", ".join(f"{k} {v:.1f} °C" for k, v in d["temperatures_c"].items()) or "n/a"),
            ("throttling", _throttle_text(d["throttle"])),
            ("OS", f"{_value(software['name'])}, kernel {_value(software['kernel'])}"),
        ]
        if memory["cgroup_limit_mb"] is not None:
            rows.append(("container memory limit", _value(memory["cgroup_limit_mb"], " MB")))
        if "jetson" in d:
            j = d["jetson"]
            rows += [
                ("L4T release", _value(d["device"]["l4t_release"])),
                ("power mode", _value(j["power_mode"])),
                ("GPU load", f"{_value(j['gpu_load_percent'], ' %')} at {_value(j['gpu_frequency_mhz'], ' MHz')}"),
                ("power rails", ", ".join(f"{k} {v:,.0f} mW" for k, v in j["power_rails_mw"].items()) or "n/a"),
                ("readings from", j["source"]),
            ]
        runtime = d.get("runtime", {})
        rows += [
            ("Python", runtime.get("python", "n/a")),
        ]
        if args.libraries:
            rows += [
                ("torch", f"{_value(runtime.get('torch'))} ({_value(runtime.get('torch_threads'))} threads)"),
                ("ONNX Runtime", f"{_value(runtime.get('onnxruntime'))} "
                                 f"({', '.join(runtime.get('onnxruntime_providers', [])) or 'no providers'})"),
            ]
        else:
            rows += [
                ("torch", f"{_value(runtime.get('torch'))} (threads: see --libraries)"),
                ("ONNX Runtime", f"{_value(runtime.get('onnxruntime'))} (providers: see --libraries)"),
            ]
        for key, value in rows:
            table.add_row(key, value)
        common.stdout.print(table)

    common.emit(args, data, human)
    return 0


def _throttle_text(throttle: dict[str, Any] | None) -> str:
    if throttle is None:
        return "n/a"
    now = ", ".join(throttle["active"]) or "none now"
    since = f"; since boot: {', '.join(throttle['occurred'])}" if throttle["occurred"] else ""
    return f"{now}{since} ({throttle['source']})"


def cmd_profile(args: argparse.Namespace) -> int:
    settings = ProfileSettings(
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        runs=args.runs,
        warmup_runs=args.warmup_runs,
        probe_items=args.probe_items,
    )
    profile = common.run_job(profile_model(args.model, settings, common.load_options(args)))
    data = profile.to_dict()

    def human(d: dict[str, Any]) -> None:
        model = d["model"]
        title = f"{model['name']} ({model['backend']}, {d['threads']} threads) on {d['device'].get('name', 'this device')}"
        table = Table(title=title)
        for column in ("figure", "p50", "p95", "p99", "samples"):
            table.add_column(column, justify="left" if column == "figure" else "right")
        for key, label in (
            ("latency_ms", f"request latency, ms ({d['prompt_tokens']} prompt + {d['generated_tokens']} new tokens)"),
            ("time_to_first_token_ms", "time to first token, ms"),
            ("decode_ms_per_token", "decode, ms per token"),
            ("prompt_tokens_per_s", "prompt tokens/s"),
            ("generated_tokens_per_s", "generated tokens/s"),
            ("probe_item_ms", "probe item (3 options), ms"),
        ):
            table.add_row(label, *(_value(d[f"{key}_p{q}"]) for q in (50, 95, 99)), str(d[f"{key}_samples"]))
        common.stdout.print(table)
        memory = Table(show_header=False, title="memory")
        memory.add_column("figure", style="bold")
        memory.add_column("value")
        for key, label in (
            ("rss_before_load_mb", "RSS before load"),
            ("rss_after_load_mb", "RSS after load"),
            ("rss_peak_load_mb", "RSS peak while loading"),
            ("rss_after_warmup_mb", "RSS after warm-up"),
            ("rss_peak_mb", "RSS peak while running"),
            ("size_on_disk_mb", "size on disk"),
        ):
            memory.add_row(label, _value(d[key], " MB"))
        common.stdout.print(memory)
        resources = d["resources"]
        common.stdout.print(
            f"{d['runs']} timed runs after {d['settings']['warmup_runs']} warm-up runs; "
            f"system CPU {_value(resources.get('cpu_percent_mean_pct'), ' %')} per core, of which this process "
            f"{_value(resources.get('process_cpu_mean_pct'), ' %')} of one core; "
            f"load average {_value(resources.get('load_mean_1m'))}; "
            f"sampler overhead {resources['sampler_overhead_percent']} %"
            + ("; throttling seen" if resources.get("throttled_seen") else ""),
            style="red" if resources.get("throttled_seen") else None,
        )
        cores = d["device"].get("cores_usable")
        load = resources.get("load_mean_1m")
        if cores and load is not None and load > cores + 0.5:
            common.stdout.print(
                f"note: the machine was busy (load {load:.1f} on {cores} cores): timings are slower and "
                "noisier than on an idle device, and fewer threads (--threads 1) can be faster and steadier",
                style="yellow",
            )

    common.emit(args, data, human)
    return 0
